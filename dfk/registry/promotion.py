"""The model registry: register the best run as ``challenger``, promote it to ``champion`` behind a gate.

``models:/deepfake-detector@champion`` (:attr:`dfk.settings.Settings.champion_uri`) is the URI
everything downstream uses. Promotion scores both aliases on the same test split with the shared
evaluation module (by default the challenger's own training data, split as its run split it) and
moves ``champion`` only when the challenger's ROC-AUC is better by ``margin``; the comparison and
the data that decided are written into the version's description and tags either way. Running it
twice changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass

from dfk.errors import UserError
from dfk.settings import SETTINGS

#: Metrics copied onto a registered version as tags.
VERSION_METRICS = ("test_roc_auc", "test_log_loss", "test_accuracy", "test_eer", "test_average_precision")


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    created: bool
    data: str = ""  # the data its run trained on (its data_dir parameter)


def best_run(experiment: str | None = None, metric: str = SETTINGS.select_metric, parent_run_id: str | None = None,
             run_ids: tuple[str, ...] = ()):
    """The finished run with a logged model that ranks first by ``metric`` (lower log loss breaks ties),
    among the training runs of one parent run, or among ``run_ids``; else among the training runs of
    ``experiment`` (every experiment when None) on the data the newest of them trained on: test
    figures compare only on one test split (the demo's built-in set scores higher than most real
    sets, and would otherwise win over a user's first run on their own folder)."""
    from dfk.runs import tracking
    from dfk.metrics.binary import lower_is_better

    fingerprint = None
    if not parent_run_id and not run_ids:
        newest = tracking.trained_runs(experiment, order_by=["attributes.start_time DESC"], max_results=1)
        fingerprint = newest[0].data.tags.get("dataset_fingerprint") if newest else None
    runs = tracking.trained_runs(
        experiment, parent_run_id=parent_run_id, max_results=50, run_ids=tuple(run_ids), fingerprint=fingerprint,
        order_by=[f"metrics.{metric} {'ASC' if lower_is_better(metric) else 'DESC'}", "metrics.test_log_loss ASC"])
    runs = [r for r in runs if metric in r.data.metrics and math.isfinite(r.data.metrics[metric])]
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise UserError(f"no finished training run with a model and metric {metric!r} in {where}; "
                        "train one first (dfk train, or mlflow run . -e srm)")
    return runs[0]


def register_best(experiment: str | None = None, metric: str = SETTINGS.select_metric, name: str = SETTINGS.model_name,
                  parent_run_id: str | None = None, run_ids: tuple[str, ...] = ()) -> Registered:
    """Register the best run as a new version (or reuse its version), alias it ``challenger``.
    ``run_ids``: choose among those runs (a pipeline's, some reused from an earlier run of it)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    run = best_run(experiment, metric, parent_run_id, run_ids)
    existing = [v for v in _versions(client, name) if v.run_id == run.info.run_id]
    created = not existing
    if existing:
        version = existing[0]
    else:
        version = mlflow.register_model(run.data.tags["model_uri"], name)
        version = client.get_model_version(name, version.version)
    tags = {k: f"{run.data.metrics[k]:.6f}" for k in VERSION_METRICS if k in run.data.metrics}
    tags.update({
        "arch": run.data.tags.get("arch", ""),
        "dataset_fingerprint": run.data.tags.get("dataset_fingerprint", ""),
        "run_id": run.info.run_id,
        "selected_by": metric,
    })
    for k, v in tags.items():
        client.set_model_version_tag(name, version.version, k, v)
    client.set_registered_model_alias(name, SETTINGS.challenger, version.version)
    aliases = [SETTINGS.challenger]
    if _alias_version(client, name, SETTINGS.champion) is None:
        client.set_registered_model_alias(name, SETTINGS.champion, version.version)
        aliases.append(SETTINGS.champion)
    return Registered(name, str(version.version), run.info.run_id, aliases, created,
                      run.data.params.get("data_dir", ""))


def _versions(client, name: str):
    try:
        return client.search_model_versions(f"name = '{name}'")
    except Exception:
        return []


def _alias_version(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:
        return None


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: str
    champion: str  # the champion version after the decision
    metrics: dict
    data: str = ""  # which folder and split decided


#: Times promote judges again because the champion moved while it was judging.
REJUDGE = 3


def promote(name: str = SETTINGS.model_name, data_dir: str | None = None, margin: float = SETTINGS.promotion_margin,
            metric: str = "roc_auc", version: str | None = None) -> Decision:
    """Move ``champion`` to ``challenger`` (or to ``version``) when it is better by ``margin`` on the
    same test split: ``data_dir``'s, or by default the challenger's own training data, split as its
    run split it.

    Compare-and-set: the judging (minutes) runs unlocked; then, under the registry's promotion lock,
    the champion is read again and the alias moves only if it is still the version judged against;
    if another promote moved it meanwhile, the challenger is judged again against the new champion.
    The decision is written on the version (description, tags) before the alias moves, so a re-run
    after a crash between the two judges again and finishes the move."""
    from mlflow import MlflowClient

    if not margin >= 0:  # also NaN: a gate that lets a worse model through (or none at all) is no gate
        raise UserError(f"margin must be 0 or more (the ROC-AUC a challenger must gain), got {margin}")
    client = MlflowClient()
    challenger = _version(client, name, version) if version else _alias_version(client, name, SETTINGS.challenger)
    if challenger is None:
        raise UserError(f"registered model {name!r} has no {SETTINGS.challenger!r} version; run dfk register first")
    for _ in range(REJUDGE):
        champion = _alias_version(client, name, SETTINGS.champion)
        if champion is None or champion.version == challenger.version:
            decision = Decision(champion is None, "challenger is already the champion" if champion else "no champion yet",
                                str(challenger.version), str(challenger.version), {})
            description, record = "", {"promotion_decision": "first champion"} if champion is None else {}
        else:
            decision, description, record = _judge(client, name, challenger, champion, data_dir, margin, metric)
        with promotion_lock(client, name):
            now = _alias_version(client, name, SETTINGS.champion)
            if getattr(now, "version", None) != getattr(champion, "version", None):
                continue  # another promote moved the champion while this one judged: judge against the new one
            if record and champion is not None:
                client.update_model_version(name, challenger.version, description=description)
            for k, v in record.items():
                client.set_model_version_tag(name, challenger.version, k, v)
            if decision.promoted:
                client.set_registered_model_alias(name, SETTINGS.champion, challenger.version)
        return decision
    raise UserError(f"the {SETTINGS.champion!r} alias of {name!r} kept moving while promote judged; run it again")


def _version(client, name: str, version: str):
    try:
        return client.get_model_version(name, str(version))
    except Exception:
        raise UserError(f"registered model {name!r} has no version {version}") from None


def _judge(client, name: str, challenger, champion, data_dir, margin: float, metric: str):
    """Score both versions on one test split: ``(Decision, description, tags)`` for the challenger."""
    from dfk.evaluation.scoring import model_data, score_folder, scoring_data
    from dfk.serving.detector import load_detector

    challenger_uri, champion_uri = f"models:/{name}/{challenger.version}", f"models:/{name}/{champion.version}"
    index, data = scoring_data(challenger_uri, data_dir)
    theirs = model_data(champion_uri)
    if theirs is not None and theirs.same_images(index.spec) and not theirs.same_split(index.spec):
        data += (f"; champion v{champion.version} was split with val_split {theirs.val_split:g}, seed {theirs.seed}, "
                 "so some of these test images may be in its training split")
    ch = score_folder(load_detector(challenger_uri), index).clean.metrics
    cp = score_folder(load_detector(champion_uri), index).clean.metrics
    gain = ch[metric] - cp[metric]
    promoted = bool(gain >= margin)
    reason = (f"challenger v{challenger.version} {metric} {ch[metric]:.4f} vs champion v{champion.version} "
              f"{cp[metric]:.4f}: {'+' if gain >= 0 else ''}{gain:.4f} "
              f"{'>=' if promoted else '<'} margin {margin}")
    verdict = "promoted to champion" if promoted else "kept as challenger"
    shown = ("roc_auc", "log_loss", "accuracy", "eer")
    comparison = {"challenger": {k: ch[k] for k in shown}, "champion": {k: cp[k] for k in shown},
                  "margin": margin, "metric": metric, "promoted": promoted, "data": data,
                  "data_dir": index.spec.data_dir, "val_split": index.spec.val_split, "seed": index.spec.seed,
                  "dataset_fingerprint": index.fingerprint}
    description = f"{verdict}: {reason}\n\njudged on {data}\n\n```json\n{json.dumps(comparison, indent=2)}\n```"
    tags = {"promotion_decision": verdict, "promotion_gain": f"{gain:.6f}",
            "promotion_against": str(champion.version), "promotion_margin": str(margin),
            "promotion_data": index.spec.data_dir, "promotion_seed": str(index.spec.seed)}
    decision = Decision(promoted, reason, str(challenger.version),
                        str(challenger.version if promoted else champion.version), comparison, data)
    return decision, description, tags


#: Suffix of the registered model whose existence is the promotion lock of a model.
LOCK_SUFFIX = ".promotion-lock"
#: Seconds a promote waits for another one's lock (held only while the alias is re-read and moved).
LOCK_WAIT = 120


@contextlib.contextmanager
def promotion_lock(client, name: str, wait: float = LOCK_WAIT):
    """Hold the promotion lock of ``name``: a registered model ``<name>.promotion-lock`` that only one
    process can create (the store's unique name is the atomic step, on SQLite, PostgreSQL or a
    server alike), tagged with its holder and a token. A lock whose holder is gone
    (:mod:`dfk.runs.liveness`) is broken by whoever first creates ``<lock>.broken-<token>``, so two
    waiters never both break it; a holder releases only a lock that still bears its token."""
    import uuid
    from dataclasses import asdict

    from mlflow.exceptions import MlflowException

    from dfk.runs.liveness import Beat, this_process

    lock, token = f"{name}{LOCK_SUFFIX}", uuid.uuid4().hex
    deadline = time.time() + wait
    delay = 0.05
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": json.dumps(asdict(this_process())), "token": token},
                                           description=f"held by dfk promote while it moves the aliases of {name}")
            break
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # SQLite: taken, then released before the store could say by whom
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _tags(client, lock)
        try:
            holder = Beat(**json.loads(held.get("holder", "")))
        except (TypeError, ValueError):
            holder = None  # released (or being written) meanwhile
        if holder is not None and holder.gone():
            _break(client, lock, held.get("token", ""))
            continue
        if time.time() > deadline:
            raise UserError(f"another promote of {name!r} holds {lock!r}; try again (or delete that registered "
                            "model if no promote runs)")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        if _tags(client, lock).get("token") == token:
            _drop(client, lock)


def _tags(client, lock: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock).tags
    except MlflowException:
        return {}


def _break(client, lock: str, dead_token: str) -> None:
    """Delete a dead holder's lock, once: only the process that creates the marker does it."""
    from mlflow.exceptions import MlflowException

    marker = f"{lock}.broken-{dead_token}"
    try:
        client.create_registered_model(marker)
    except MlflowException:
        return  # another process is breaking it
    try:
        if _tags(client, lock).get("token") == dead_token:
            _drop(client, lock)
    finally:
        _drop(client, marker)


def _drop(client, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException:
        pass
