"""Optuna sweeps over the one training path, each trial a child MLflow run of one parent run.

* The study lives in an Optuna RDB storage (default: SQLite ``optuna.db`` beside the MLflow
  tracking store, see :func:`default_storage`);
  ``--study-name`` resumes a study and adds trials; ``--workers N`` starts N processes on the same
  storage; with a shared ``--storage postgresql+psycopg://...``, the same command on other machines
  joins the sweep in progress (its parent run is in the study's user attributes), and the sweep
  runs exactly ``n_trials`` trials however many processes work on it.
* Running trials beat a heartbeat in the storage: a worker that dies mid-trial has its trial failed
  by a live worker, its MLflow run ended KILLED, and the trial run again with the same parameters.
* TPE, seeded; MedianPruner by default (``hyperband`` or ``none`` selectable), fed every epoch by
  optuna-integration's Keras pruning callback with the trial's best value so far.
* A pruned trial's run ends KILLED, a failed one (exception, NaN loss) FAILED, each tagged with
  its Optuna state; the sweep goes on. Every trial logs its model, so the registry can pick the best.

Children are tagged ``mlflow.parentRunId`` instead of being started "nested" in-process, so
trials from worker processes hang under the same parent in the MLflow UI.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfk.data.scan import DataSpec
from dfk.settings import SETTINGS
from dfk.tuning.study import (RUN_ATTR, Session, SweepSpec, _create_or_load, default_storage, describe_pruner,
                              join_or_start, redact)
from dfk.tuning.trials import _run_trials, _worker

@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    best_value: float | None
    best_params: dict[str, Any]
    best_run_id: str | None
    n_trials: int  # in the study, across every session that added to it
    states: dict[str, int]
    experiment: str = ""
    storage: str = ""  # the study's storage URL, password hidden


def tune(spec: SweepSpec) -> SweepResult:
    """Run a sweep: one parent run, ``n_trials`` child runs, then the study's summary on the parent.

    If the study has a sweep in progress (started by this command on another machine, with the same
    ``--study-name`` and ``--storage``), this process joins it: its trials go under that sweep's
    parent run and count toward that sweep's ``n_trials``. Whichever process ends last writes the
    summary and ends the parent run.
    """
    import mlflow

    from dfk.runs import tracking

    spec.validate()
    spec.study_name = spec.study_name or f"{spec.base.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec.tracking_uri = spec.tracking_uri or mlflow.get_tracking_uri()
    spec.storage = spec.storage or default_storage(spec.tracking_uri)
    index = DataSpec.of_config(spec.base).open()  # a bad data folder fails here, before any run exists
    study, created = _create_or_load(spec)  # a bad storage URL fails here too
    tracking.ready_store(spec.tracking_uri)  # a joiner reads the store first
    session = join_or_start(spec, study, created)
    spec.experiment = session.experiment
    # A sweep in one process samples from the run's seed (repeatable); where several processes work
    # on it, each draws its own, so that no two start with the same samples.
    seed = spec.base.seed if not session.joined and spec.workers == 1 else None
    last: list[bool] = []  # decided once, when this process's part of the sweep ends

    def ends_parent(status: str) -> bool:
        if not last:
            last.append(_last(spec, session))
        return last[0]

    with contextlib.ExitStack() as stack:
        entry = tracking.take_entry_run() if session.joined else None  # under mlflow run: a pointer to the sweep
        if entry:
            mlflow.MlflowClient().set_tag(entry, "sweep_parent_run_id", session.parent_run_id)
            stack.enter_context(tracking.ending(entry))
        stack.enter_context(tracking.ending(session.parent_run_id, end=ends_parent))
        if session.joined:
            print(f"joining the sweep in progress on study {spec.study_name!r}: parent run {session.parent_run_id}")
        else:
            tracking.log_params_once({
                "arch": spec.base.arch, "n_trials": spec.n_trials, "objective": spec.objective,
                "direction": spec.direction, "pruner": spec.pruner, "study_name": spec.study_name,
                "pruner_settings": describe_pruner(spec.pruner, spec.base.epochs),
                "storage": redact(spec.storage), "workers": spec.workers, "sampler": "TPE",
                "seed": spec.base.seed, "image_size": spec.base.image_size, "epochs": spec.base.epochs,
                "data_dir": spec.base.data_dir, "space": spec.space_path or "",
                "heartbeat_interval": SETTINGS.heartbeat_interval,
            }, run_id=session.parent_run_id)
        if spec.workers == 1:
            _run_trials(spec, session, seed, index)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker, args=(spec, session, seed)) for _ in range(spec.workers)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.join()
                raise
        result = _summarise(spec, session, write=ends_parent("FINISHED"))
    return result


def _last(spec: SweepSpec, session: Session) -> bool:
    """Whether no trial of the sweep is running or queued any more (this process ends it)."""
    import optuna

    study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
    return session.counts(study)["live"] == 0


def _summarise(spec: SweepSpec, session: Session, write: bool) -> SweepResult:
    """The study so far; with ``write``, also logged on the sweep's parent run."""
    import mlflow
    import optuna

    client = mlflow.MlflowClient()
    parent_run_id = session.parent_run_id
    study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
    trials = study.trials
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    result = SweepResult(parent_run_id, spec.study_name, best.value if best else None, best.params if best else {},
                         best.user_attrs.get(RUN_ATTR) if best else None, len(trials), states,
                         spec.experiment, redact(spec.storage))
    if not write:
        return result
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study.trials_dataframe().to_csv(tmp / "trials.csv", index=False)
        _plots(study, tmp / "plots")
        client.log_artifacts(parent_run_id, str(tmp))
    metrics = {f"trials_{k.lower()}": v for k, v in states.items()}
    if best is not None:
        metrics["best_value"] = best.value
        client.log_dict(parent_run_id, {"value": best.value, "params": best.params, "trial": best.number,
                                        "run_id": best.user_attrs.get(RUN_ATTR)}, "best.json")
        for k, v in best.params.items():
            client.log_param(parent_run_id, f"best_{k}", v)
        client.set_tag(parent_run_id, "best_run_id", best.user_attrs.get(RUN_ATTR, ""))
        client.set_tag(parent_run_id, "best_trial", str(best.number))
    for k, v in metrics.items():
        client.log_metric(parent_run_id, k, v)
    return result


def _plots(study, out: Path) -> None:
    """Optuna's matplotlib plots; one that needs more finished trials than there are is left out."""
    import warnings

    import optuna.visualization.matplotlib as ovm

    from dfk.metrics.plots import pyplot, save

    pyplot()
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("optimization_history", ovm.plot_optimization_history),
                     ("param_importances", ovm.plot_param_importances),
                     ("parallel_coordinate", ovm.plot_parallel_coordinate),
                     ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            save(fig, out / f"{name}.png")
        except Exception as exc:  # e.g. importances need two finished trials
            (out / f"{name}.txt").write_text(f"not drawn: {exc}\n")
