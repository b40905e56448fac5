"""The whole job in one call: train several architectures, register the best, promote it, check robustness.

``mlflow run .`` (entry point ``main``) calls :func:`run_main`. Each step is also an entry point of
its own (``cnn``/``resnet``, ``register``, ``promote``, ``evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dfk.config import TrainConfig, parse_archs
from dfk.settings import SETTINGS


@dataclass
class MainResult:
    parent_run_id: str
    run_ids: dict[str, str]
    champion_uri: str
    champion_version: str
    promoted: bool
    evaluation_run_id: str


def run_main(base: TrainConfig, archs: str = SETTINGS.archs, experiment: str = SETTINGS.experiment,
             perturb: str = SETTINGS.perturb) -> MainResult:
    """Train each of ``archs`` as a child run, register the best of them, promote it behind the gate
    (judged on the data they trained on) and check the champion's robustness there."""
    import mlflow

    from dfk.runs import tracking
    from dfk.registry.promotion import promote, register_best
    from dfk.evaluation.scoring import evaluate_model, parse_perturbations
    from dfk.training.trainer import train

    perturbations = parse_perturbations(perturb)
    configs = parse_archs(archs, base)  # every bad parameter fails before any run
    from dfk.data.scan import DataSpec

    opened = {}  # each distinct folder and split opened once (a bad folder fails here, before any run)
    for spec in map(DataSpec.of_config, configs):
        if spec not in opened:
            opened[spec] = spec.open()
    client = mlflow.MlflowClient()
    with tracking.parent_run(experiment, "main", {"sweep": "parent", "pipeline": "main"}) as (pid, experiment):
        run_ids = {}
        for cfg in configs:
            print(f"[dfk] main: training {cfg.arch}", flush=True)
            run_ids[cfg.arch] = train(cfg, experiment=experiment, parent_run_id=pid, index=opened[DataSpec.of_config(cfg)]).run_id
        registered = register_best(parent_run_id=pid)
        decision = promote()  # on the challenger's own test split
        eval_run, score, _ = evaluate_model(SETTINGS.champion_uri, None, perturbations)
        for arch, rid in run_ids.items():
            client.set_tag(pid, f"run_{arch}", rid)
        client.set_tag(pid, "registered_version", registered.version)
        client.set_tag(pid, "champion_version", decision.champion)
        client.set_tag(pid, "evaluation_run_id", eval_run)
        client.log_metric(pid, "champion_test_roc_auc", score.clean.metrics["roc_auc"])
        return MainResult(pid, run_ids, SETTINGS.champion_uri, decision.champion, decision.promoted, eval_run)
