"""The steps the pipelines are made of, each one library call of dfk's run as a reusable step.

Every function takes the pipeline (:class:`dfk.runs.steps.Pipeline`), runs its step as a child run of
it (or reuses a finished twin: same entry point, parameters, data fingerprint and code) and returns
the :class:`dfk.runs.steps.Step`, whose ``run_id`` and ``outputs`` the next steps take as inputs.
The entry point names are the MLproject's: an architecture's name for training, ``register``,
``promote``, ``evaluate``, ``tune``, ``synth``, ``inspect``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

from dfk.config import TrainConfig
from dfk.runs.steps import Pipeline, Step
from dfk.settings import SETTINGS


def open_data(configs: Iterable[TrainConfig]) -> dict:
    """Each distinct folder and split the configs name, opened once into its index (DataSpec -> index).

    Not a run: its product, the index, is what every step's key is made of; a bad folder fails here,
    before any run exists."""
    from dfk.data.scan import DataSpec

    opened: dict = {}
    for spec in map(DataSpec.of_config, configs):
        if spec not in opened:
            opened[spec] = spec.open()
    return opened


def fingerprint(indexes: Iterable) -> str:
    """One fingerprint for the data of several steps."""
    return "+".join(sorted({index.fingerprint for index in indexes}))


def train(p: Pipeline, cfg: TrainConfig, index) -> Step:
    """Train ``cfg`` on ``index``: the training run is the step's run (entry point: the architecture)."""
    from dfk.training.trainer import train as fit

    params = {**cfg.to_dict(), "data_dir": index.spec.data_dir}  # the folder as opened: absolute, or builtin

    def start(tags: dict[str, str]) -> str:
        return fit(cfg, experiment=p.experiment, parent_run_id=p.run_id, index=index, tags=tags).run_id

    return p.step_run(cfg.arch, params, start, data=index.fingerprint)


def _version_exists(name: str, output: str):
    """Whether the model version a twin step recorded as ``output`` is still in the registry."""

    def usable(step: Step) -> bool:
        import mlflow

        try:
            mlflow.MlflowClient().get_model_version(name, step.outputs.get(output, ""))
            return True
        except Exception:  # deleted since: the twin's outputs stand for nothing now
            return False

    return usable


def register(p: Pipeline, data: str, runs: Sequence[str] = (), parent: str = "",
             metric: str = SETTINGS.select_metric, name: str = SETTINGS.model_name) -> Step:
    """Register the best of ``runs`` (or of the training runs under run ``parent``) as ``challenger``;
    outputs ``version`` and ``trained_run_id``."""
    from dfk.registry.promotion import register_best

    def body(run_id: str) -> dict:
        r = register_best(metric=metric, name=name, parent_run_id=parent or None, run_ids=tuple(runs))
        p.say(f"registered {name} version {r.version} (run {r.run_id}) as {SETTINGS.challenger}")
        return {"version": r.version, "trained_run_id": r.run_id}

    params = {"runs": ",".join(sorted(runs)), "parent": parent, "metric": metric, "name": name}
    return p.step("register", params, body, data=data, usable=_version_exists(name, "version"))


def promote(p: Pipeline, version: str, data: str, name: str = SETTINGS.model_name,
            margin: float = SETTINGS.promotion_margin) -> Step:
    """Promote ``version`` behind the gate, judged on its own run's test split; outputs ``champion``
    (the champion version after the decision), ``promoted`` and ``reason``."""
    from dfk.registry.promotion import promote as judge

    def body(run_id: str) -> dict:
        d = judge(name=name, margin=margin, version=version)
        p.say(f"champion version {d.champion}{' (promoted)' if d.promoted else ''}: {d.reason}")
        return {"champion": d.champion, "promoted": d.promoted, "reason": d.reason}

    params = {"name": name, "version": version, "margin": margin}
    return p.step("promote", params, body, data=data, usable=_version_exists(name, "champion"))


def evaluate(p: Pipeline, model_uri: str, perturb: str, data: str, data_dir: str | None = None) -> Step:
    """Score ``model_uri`` on ``data_dir`` (default: its own run's test split), clean and under
    ``perturb``; outputs ``evaluation_run_id`` and ``test_roc_auc``."""
    from dfk.evaluation.scoring import evaluate_model, parse_perturbations

    def body(run_id: str) -> dict:
        eval_run, score, _ = evaluate_model(model_uri, data_dir, parse_perturbations(perturb))
        return {"evaluation_run_id": eval_run, "test_roc_auc": score.clean.metrics["roc_auc"]}

    params = {"model_uri": model_uri, "data_dir": data_dir or "", "perturb": perturb}
    return p.step("evaluate", params, body, data=data)


def tune(p: Pipeline, spec, index) -> Step:
    """An Optuna sweep (:func:`dfk.tuning.sweep.tune`); outputs its ``parent_run_id``, ``study_name``,
    ``best_run_id`` and ``best_value``."""
    import hashlib

    from dfk.tuning.study import redact
    from dfk.tuning.sweep import tune as sweep

    def body(run_id: str) -> dict:
        r = sweep(spec)
        return {"parent_run_id": r.parent_run_id, "study_name": r.study_name, "best_run_id": r.best_run_id,
                "best_value": r.best_value}

    space = Path(spec.space_path).read_bytes() if spec.space_path else b""
    params = {**spec.base.to_dict(), "data_dir": index.spec.data_dir, "n_trials": spec.n_trials,
              "objective": spec.objective, "direction": spec.direction, "pruner": spec.pruner,
              "study_name": spec.study_name, "storage": redact(spec.storage), "workers": spec.workers,
              "space": hashlib.sha256(space).hexdigest()[:16] if space else ""}
    return p.step("tune", params, body, data=index.fingerprint)


def synth(p: Pipeline, spec, out: str | Path) -> Step:
    """Write the synthetic set ``spec`` (:class:`dfk.data.synth.SynthSpec`) into ``out``; outputs ``path``."""
    from dfk.data.synth import GENERATOR_VERSION, generate

    out = Path(out).expanduser().resolve()
    wanted = json.loads(json.dumps(asdict(spec)))  # as the manifest spells it (tuples as lists)

    def written(path: Path) -> bool:
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return manifest.get("spec") == wanted and manifest.get("generator_version") == GENERATOR_VERSION

    def body(run_id: str) -> dict:
        # The generator is deterministic: a folder it wrote from this spec holds what it would write again.
        if not written(out):
            generate(spec, out)
        return {"path": str(out)}

    return p.step("synth", {**wanted, "out": str(out)}, body, usable=lambda s: written(Path(s.outputs.get("path", ""))))


def inspect(p: Pipeline, index) -> Step:
    """Counts, bad files and the format-leakage check of ``index``, logged as the step's artifacts;
    outputs ``leaks`` (the cues that alone tell fakes from reals) and ``bad_files``."""
    from dfk.data.leakage import check_leakage

    def body(run_id: str) -> dict:
        import mlflow

        reports = check_leakage(index)
        client = mlflow.MlflowClient()
        client.log_dict(run_id, index.summary(), "data/dataset.json")
        client.log_dict(run_id, [{"cue": r.cue, "balanced_accuracy": r.accuracy, "leaks": r.leaks, "real": r.real,
                                  "fake": r.fake} for r in reports], "data/leakage.json")
        bad = "".join(f"{path}\t{reason}\n" for path, reason in index.bad_files)
        client.log_text(run_id, bad, "data/bad_files.tsv")
        return {"leaks": ",".join(r.cue for r in reports if r.leaks), "bad_files": len(index.bad_files)}

    params = {"data_dir": index.spec.data_dir, "val_split": index.spec.val_split, "seed": index.spec.seed}
    return p.step("inspect", params, body, data=index.fingerprint)


def faces(p: Pipeline, spec) -> Step:
    """Cut the face crops of the videos and photos in ``spec.src`` into ``spec.out`` (a
    :class:`dfk.data.prepare.PrepareSpec`): its own run, with the source as its dataset input, the
    report and its counts; reused while ``spec.out`` still holds what it wrote."""
    from dfk.data import prepare
    from dfk.runs import tracking

    def start(tags: dict[str, str]) -> str:
        import mlflow
        import pandas as pd

        tracking.use_experiment(p.experiment)
        with tracking.run("faces", tags={**tracking.standard_tags(), **tags}) as active:
            tracking.log_params_once(spec.params())
            report = prepare.prepare_faces(spec)
            rows = pd.DataFrame(report.files, columns=["path", "label", "split", "crops"])
            source = mlflow.data.from_pandas(rows, source=report.src, targets="label", name=Path(report.src).name,
                                             digest=prepare.fingerprint(spec.src))
            mlflow.log_input(source, context="source", tags={"layout": report.layout, "sources": str(report.sources)})
            mlflow.log_metrics({k: getattr(report, k) for k in ("videos_read", "photos_read", "frames_sampled",
                                                                  "frames_with_face", "faces_written", "sources")}
                               | {"files_failed": len(report.failed)})
            mlflow.log_dict(report.summary(), "data/prepare_report.json")
            mlflow.log_text("".join(f"{path}\t{why}\n" for path, why in report.failed), "data/failed_files.tsv")
            return active.info.run_id

    return p.step_run("faces", spec.params(), start, data=prepare.fingerprint(spec.src),
                      usable=lambda step: prepare.written_by(spec))
