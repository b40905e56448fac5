"""The whole job in one call: train several architectures, register the best, promote it, check robustness.

``mlflow run .`` (entry point ``main``) calls :func:`run_main`. Each step is also an entry point of
its own (``cnn``/``resnet``, ``register``, ``promote``, ``evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dfk.config import TrainConfig, parse_pairs
from dfk.errors import UserError

#: What the whole job trains by default, as ``--archs`` / ``-P archs=`` spells it: ``arch`` or
#: ``arch:key=value:...`` to override parameters for that architecture alone.
DEFAULT_ARCHS = "srm,resnet:epochs=1:image_size=32"


def parse_archs(archs: str, base: TrainConfig) -> list[TrainConfig]:
    """One config per comma-separated entry of ``archs``; every bad entry fails before any run."""
    configs = []
    for entry in (e.strip() for e in archs.split(",")):
        if not entry:
            continue
        arch, *pairs = entry.split(":")
        overrides = parse_pairs(pairs, lambda _: f"archs entry {entry!r}: write overrides as arch:key=value[:key=value]")
        configs.append(base.replace(arch=arch.strip(), **{k: v.strip() for k, v in overrides.items()}))
    if not configs:
        raise UserError("archs is empty; name at least one architecture (see `dfk models`)")
    return configs


@dataclass
class MainResult:
    parent_run_id: str
    run_ids: dict[str, str]
    champion_uri: str
    champion_version: str
    promoted: bool
    evaluation_run_id: str


def run_main(base: TrainConfig, archs: str = DEFAULT_ARCHS, experiment: str = "dfk", perturb: str = "default",
             model_name: str = "deepfake-detector", margin: float = 0.005) -> MainResult:
    import mlflow

    from dfk import tracking
    from dfk.registry import promote, register_best
    from dfk.scoring import evaluate_model, parse_perturbations
    from dfk.training import load_index, resolve_data_dir, train

    perturbations = parse_perturbations(perturb)
    configs = parse_archs(archs, base)  # every bad parameter fails before any run
    load_index(base)
    data_dir = resolve_data_dir(base)
    client = mlflow.MlflowClient()
    pid = tracking.take_entry_run()
    if pid:
        experiment = client.get_experiment(client.get_run(pid).info.experiment_id).name
    else:
        tracking.use_experiment(experiment)
        exp = client.get_experiment_by_name(experiment)
        pid = client.create_run(exp.experiment_id, run_name="main", tags={"sweep": "parent"}).info.run_id
    client.set_tag(pid, "pipeline", "main")
    status = "FAILED"
    try:
        run_ids = {}
        for cfg in configs:
            print(f"[dfk] main: training {cfg.arch}", flush=True)
            run_ids[cfg.arch] = train(cfg, experiment=experiment, parent_run_id=pid).run_id
        registered = register_best(experiment, name=model_name)
        decision = promote(model_name, data_dir, margin)
        champion_uri = f"models:/{model_name}@champion"
        eval_run, score = evaluate_model(champion_uri, data_dir, perturbations, experiment="dfk-eval")
        for arch, rid in run_ids.items():
            client.set_tag(pid, f"run_{arch}", rid)
        client.set_tag(pid, "registered_version", registered.version)
        client.set_tag(pid, "champion_version", decision.champion)
        client.set_tag(pid, "evaluation_run_id", eval_run)
        client.log_metric(pid, "champion_test_roc_auc", score.clean.metrics["roc_auc"])
        status = "FINISHED"
        return MainResult(pid, run_ids, champion_uri, decision.champion, decision.promoted, eval_run)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(pid, status)
