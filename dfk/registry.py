"""The model registry: register the best run as ``challenger``, promote it to ``champion`` behind a gate.

``models:/deepfake-detector@champion`` is the URI everything downstream uses. Promotion
re-evaluates both aliases on the same test split with the shared evaluation module and moves
``champion`` only when the challenger's ROC-AUC is better by ``margin``; the comparison is written
into the version's description and tags either way. Running it twice changes nothing the second
time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from dfk.errors import UserError

DEFAULT_MODEL_NAME = "deepfake-detector"
CHALLENGER, CHAMPION = "challenger", "champion"
#: Metrics copied onto a registered version as tags.
VERSION_METRICS = ("test_roc_auc", "test_log_loss", "test_accuracy", "test_eer", "test_average_precision")


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    created: bool


def best_run(experiment: str, metric: str = "test_roc_auc"):
    """The finished run with a logged model that ranks first by ``metric`` (lower log loss breaks ties)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"experiment {experiment!r} does not exist; train a model first (dfk train)")
    from dfk.evaluation import lower_is_better

    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED' and tags.model_uri LIKE 'runs:/%'",
        order_by=[f"metrics.{metric} {'ASC' if lower_is_better(metric) else 'DESC'}", "metrics.test_log_loss ASC"],
        max_results=50,
        output_format="list",
    )
    runs = [r for r in runs if metric in r.data.metrics and math.isfinite(r.data.metrics[metric])]
    if not runs:
        raise UserError(f"no finished run with a model and metric {metric!r} in experiment {experiment!r}")
    return runs[0]


def register_best(experiment: str = "dfk", metric: str = "test_roc_auc",
                  name: str = DEFAULT_MODEL_NAME) -> Registered:
    """Register the best run as a new version (or reuse its version), alias it ``challenger``."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    run = best_run(experiment, metric)
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
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    aliases = [CHALLENGER]
    if _alias_version(client, name, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        aliases.append(CHAMPION)
    return Registered(name, str(version.version), run.info.run_id, aliases, created)


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


def evaluate_uri(model_uri: str, data_dir: str | Path) -> dict:
    """Score a registered or logged model on a folder's test split with the shared metrics."""
    from dfk.data.scan import scan
    from dfk.scoring import score_folder
    from dfk.serving import load_detector

    return score_folder(load_detector(model_uri), scan(data_dir)).clean.metrics


def promote(name: str = DEFAULT_MODEL_NAME, data_dir: str | Path | None = None, margin: float = 0.005,
            metric: str = "roc_auc") -> Decision:
    """Move ``champion`` to ``challenger`` when it is better by ``margin`` on the same test split."""
    from mlflow import MlflowClient

    client = MlflowClient()
    challenger = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    if challenger is None:
        raise UserError(f"registered model {name!r} has no {CHALLENGER!r} version; run dfk register first")
    if champion is None or champion.version == challenger.version:
        if champion is None:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        return Decision(champion is None, "challenger is already the champion" if champion else "no champion yet",
                        str(challenger.version), str(challenger.version), {})
    if data_dir is None:
        from dfk.data.synth import builtin_dataset

        data_dir = builtin_dataset()
    ch = evaluate_uri(f"models:/{name}/{challenger.version}", data_dir)
    cp = evaluate_uri(f"models:/{name}/{champion.version}", data_dir)
    gain = ch[metric] - cp[metric]
    promoted = bool(gain >= margin)
    reason = (f"challenger v{challenger.version} {metric} {ch[metric]:.4f} vs champion v{champion.version} "
              f"{cp[metric]:.4f}: {'+' if gain >= 0 else ''}{gain:.4f} "
              f"{'>=' if promoted else '<'} margin {margin}")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    verdict = "promoted to champion" if promoted else "kept as challenger"
    comparison = {"challenger": {k: ch[k] for k in ("roc_auc", "log_loss", "accuracy", "eer")},
                  "champion": {k: cp[k] for k in ("roc_auc", "log_loss", "accuracy", "eer")},
                  "margin": margin, "metric": metric, "promoted": promoted, "data_dir": str(data_dir)}
    client.update_model_version(name, challenger.version, description=f"{verdict}: {reason}\n\n"
                                f"```json\n{json.dumps(comparison, indent=2)}\n```")
    for k, v in {"promotion_decision": verdict, "promotion_gain": f"{gain:.6f}",
                 "promotion_against": str(champion.version), "promotion_margin": str(margin)}.items():
        client.set_model_version_tag(name, challenger.version, k, v)
    return Decision(promoted, reason, str(challenger.version),
                    str(challenger.version if promoted else champion.version), comparison)
