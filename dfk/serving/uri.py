"""One resolver for a model URI: ``runs:/RUN/PATH``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``
or a local model folder (any other URI MLflow loads is taken as it is).

A command resolves its model once (:func:`resolve_model`) and hands the result to everything that
loads, scores or describes the model, so an alias that moves meanwhile cannot give one step one
version and the next step another: the alias is pinned to the version it named at resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dfk.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A model URI as resolved: what to load and where it came from ('' where unknown or not one)."""

    given: str  # as the user wrote it: what messages, tags and the app show
    uri: str  # what to load: a registered model's version pinned (models:/NAME/VERSION), else as given
    run_id: str = ""  # the run that logged the model
    name: str = ""  # registered model
    version: str = ""
    alias: str = ""  # the alias the URI named
    aliases: tuple[str, ...] = ()  # every alias the version has
    path: Path | None = None  # a local model folder

    def __str__(self) -> str:
        return self.given

    def run(self):
        """The run that logged the model, or None when the model names none or its run is not in this
        tracking store."""
        import mlflow

        if not self.run_id:
            return None
        try:
            return mlflow.get_run(self.run_id)
        except Exception:  # another tracking store, deleted: the caller decides what that means
            return None


def resolve_model(model: str | ModelRef) -> ModelRef:
    """Resolve ``model`` (a :class:`ModelRef` is returned as it is).

    A registered model's alias or version must exist (else a :class:`UserError` "cannot load model");
    anything else is looked up no further than its run id, and a model that is not there fails
    where it is loaded."""
    if isinstance(model, ModelRef):
        return model
    uri = str(model)
    if uri.startswith("models:/"):
        return _registered(uri)
    if uri.startswith("runs:/"):
        return ModelRef(uri, uri, run_id=uri[len("runs:/"):].split("/", 1)[0])
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    local = Path(unquote(parsed.path) if parsed.scheme == "file" else uri) if parsed.scheme in ("", "file") else None
    return ModelRef(uri, uri, run_id=_logged_by(uri), path=local)


def _registered(uri: str) -> ModelRef:
    from mlflow import MlflowClient

    ref = uri[len("models:/"):].strip("/")
    name, alias, version = ref, "", ""
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
    if not version.isdigit() and not alias:  # a stage or "latest": MLflow resolves it when it loads
        return ModelRef(uri, uri, run_id=_logged_by(uri), name=name)
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:  # MlflowException, a refused connection, ...: all mean "no such model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {uri!r}: {first[:200]}") from None
    pinned = f"models:/{name}/{mv.version}"
    return ModelRef(uri, pinned, run_id=mv.run_id or _logged_by(pinned), name=name, version=str(mv.version),
                    alias=alias, aliases=tuple(mv.aliases or ()))


def _logged_by(uri: str) -> str:
    """The id of the run that logged the model at ``uri`` (from its MLmodel file), '' where none or
    the model cannot be read."""
    from mlflow.models import get_model_info

    try:
        return get_model_info(uri).run_id or ""
    except Exception as exc:  # no such model here: loading it says so
        log.debug("no run id for %s: %s", uri, exc)
        return ""
