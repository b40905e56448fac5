"""The whole job: data -> train each architecture -> register the best -> promote it -> robustness check.

``mlflow run .`` (entry point ``main``: ``python -m dfk.cli.pipelines main``) and ``dfk main`` call
:func:`run_main`. Each step is a child run of the job's run, reused when a finished run of it with
the same inputs exists (:mod:`dfk.runs.steps`): run again with nothing changed, the job trains
nothing; after a failure it resumes at the step that failed; ``force`` redoes every step. Each step
is also an entry point of its own (``srm``/``resnet``, ``register``, ``promote``, ``evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dfk.config import BUILTIN_DATA, TrainConfig, parse_archs
from dfk.settings import SETTINGS


@dataclass
class MainResult:
    parent_run_id: str
    run_ids: dict[str, str]
    champion_uri: str
    champion_version: str
    promoted: bool
    evaluation_run_id: str
    reused: list[str] = field(default_factory=list)  # entry points of the steps reused, not run


def _demo() -> dict[str, list[str]]:
    """The demo's shortening: arch -> its ``key=value`` overrides."""
    entries = [e.strip().split(":") for e in SETTINGS.demo_overrides.split(",") if e.strip()]
    return {arch.strip(): pairs for arch, *pairs in entries}


def configs(archs: str, base: TrainConfig) -> list[TrainConfig]:
    """One config per entry of ``archs``; on the built-in set the demo's shortening
    (:attr:`dfk.settings.Settings.demo_overrides`) applies beneath each entry's own overrides, and on
    any other folder each architecture keeps its own defaults. Every bad entry fails here."""
    mine = parse_archs(archs, base)  # the user's own entries fail with their own words
    if base.data_dir != BUILTIN_DATA:
        return mine
    demo = _demo()
    entries = [e.strip().split(":") for e in archs.split(",") if e.strip()]
    return parse_archs(",".join(":".join([arch, *demo.get(arch.strip(), []), *pairs]) for arch, *pairs in entries), base)


def describe(cfg: TrainConfig) -> str:
    """One line of the settings an architecture trains with, and where they come from."""
    if cfg.data_dir != BUILTIN_DATA:
        where = "a folder of images: the architecture's own defaults, but for parameters given"
    elif cfg.arch in _demo():
        where = f"the built-in set, with the demo's shortening {':'.join([cfg.arch, *_demo()[cfg.arch]])}"
    else:
        where = "the built-in set"
    return (f"{cfg.arch}: {cfg.image_size} px, up to {cfg.epochs} epochs, batch {cfg.batch_size}, "
            f"learning rate {cfg.learning_rate:g}, weights {cfg.weights} ({where})")


def run_main(base: TrainConfig, archs: str = SETTINGS.archs, experiment: str = SETTINGS.experiment,
             perturb: str = SETTINGS.perturb, force: bool = False) -> MainResult:
    """Train each of ``archs`` as a child run, register the best of them, promote it behind the gate
    (judged on the data they trained on) and check the champion's robustness there."""
    import mlflow

    from dfk.data.scan import DataSpec
    from dfk.evaluation.scoring import parse_perturbations
    from dfk.runs.steps import pipeline
    from pipelines import steps

    parse_perturbations(perturb)  # a bad list fails before any run
    cfgs = configs(archs, base)
    for cfg in cfgs:
        print(f"[dfk] main: {describe(cfg)}", flush=True)
    data = steps.open_data(cfgs)
    seen = steps.fingerprint(data.values())
    with pipeline("main", experiment, force) as p:
        runs = {cfg.arch: steps.train(p, cfg, data[DataSpec.of_config(cfg)]).run_id for cfg in cfgs}
        registered = steps.register(p, seen, runs=list(runs.values()))
        decision = steps.promote(p, registered.outputs["version"], seen)
        champion = decision.outputs["champion"]
        evaluation = steps.evaluate(p, f"models:/{SETTINGS.model_name}/{champion}", perturb, seen)

        client = mlflow.MlflowClient()
        for arch, rid in runs.items():
            client.set_tag(p.run_id, f"run_{arch}", rid)
        client.set_tag(p.run_id, "registered_version", registered.outputs["version"])
        client.set_tag(p.run_id, "champion_version", champion)
        client.set_tag(p.run_id, "evaluation_run_id", evaluation.outputs["evaluation_run_id"])
        client.log_metric(p.run_id, "champion_test_roc_auc", float(evaluation.outputs["test_roc_auc"]))
        return MainResult(p.run_id, runs, SETTINGS.champion_uri, champion, decision.outputs["promoted"] == "True",
                          evaluation.outputs["evaluation_run_id"], [s.entry_point for s in p.steps if s.reused])

