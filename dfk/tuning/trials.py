"""One trial: a child MLflow run of the sweep's parent, trained through the one training path,
pruned on its best value so far; and the worker loop that runs trials until the sweep has enough."""

from __future__ import annotations

import math
import os
import time

from dfk.data.scan import DataSpec
from dfk.errors import UserError
from dfk.runs.lifecycle import FAILED, end_status
from dfk.settings import SETTINGS
from dfk.tuning.space import load_space, sample
from dfk.tuning.study import (INTERRUPTED_ATTR, RUN_ATTR, SURPLUS_ATTR, WORKER_ATTR, Session, SweepSpec, _end_trial_run,
                              open_study, trial_runs)

def _objective(spec: SweepSpec, session: Session, space, index):
    import mlflow
    import optuna

    from dfk.training.trainer import train

    worker = _worker_name()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr(RUN_ATTR, "")  # a retried trial's copy of its dead original's run
        if _surplus(trial, session):
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.study.stop()
            raise SurplusTrial(f"trial {trial.number} is beyond the sweep's {session.n_trials}: not run")
        params = sample(trial, space)
        cfg = spec.base.replace(**params)
        tags = {"optuna_study": spec.study_name, "optuna_trial": str(trial.number), "worker": worker}
        callbacks = [_record_run(trial), best_so_far_pruning(trial, spec.objective, spec.direction)]
        try:
            result = train(cfg, experiment=session.experiment, parent_run_id=session.parent_run_id, index=index,
                           callbacks=callbacks, tags=tags, checkpoint=False)
        except KeyboardInterrupt:  # stopped, not finished: another worker runs a trial in its place
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise
        except Exception as exc:  # pruned: KILLED, as a stopped run; else FAILED
            pruned = isinstance(exc, optuna.TrialPruned)
            _close_trial_run(trial, end_status(exc, stops=(optuna.TrialPruned,)), "PRUNED" if pruned else "FAIL")
            raise
        values = [v for v in result.history.get(spec.objective, []) if math.isfinite(v)]
        if not values:
            _close_trial_run(trial, FAILED, "FAIL")
            raise UserError(f"trial {trial.number} produced no finite {spec.objective}")
        value = max(values) if spec.direction == "maximize" else min(values)
        trial.set_user_attr("epochs_trained", len(result.history.get("loss", [])))
        client = mlflow.MlflowClient()
        client.log_metric(result.run_id, "objective", value)
        client.set_tag(result.run_id, "optuna_state", "COMPLETE")
        return value

    return objective


class SurplusTrial(Exception):
    """Two workers started a trial at the same moment when one was left: the later one stands down."""


def _surplus(trial, session: Session) -> bool:
    """Whether the sweep's trials numbered before this one already make ``n_trials`` (ended or live)."""
    before = session.counts(trial.study, before=trial.number)
    return before["ended"] + before["live"] >= session.n_trials


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _record_run(trial):
    """A Keras callback that records the trial's MLflow run on the trial when training starts, so a
    live worker can end that run if this one dies."""
    import keras
    import mlflow

    class RecordRun(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            trial.set_user_attr(RUN_ATTR, mlflow.active_run().info.run_id)

    return RecordRun()


def best_so_far_pruning(trial, monitor: str, direction: str):
    """optuna-integration's Keras pruning callback, fed the trial's best ``monitor`` so far.

    A trial's value is its best epoch, so the best so far is the value it would end with if it
    stopped now: the pruner compares like with like, and one noisy epoch neither rescues nor sinks
    a trial. A non-finite value is reported as it is (the NaN-loss path ends the trial anyway).
    """
    from optuna_integration import KerasPruningCallback

    better = max if direction == "maximize" else min

    class BestSoFarPruning(KerasPruningCallback):
        best: float | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = dict(logs or {})
            value = logs.get(monitor)
            if value is not None and math.isfinite(value):
                self.best = logs[monitor] = value if self.best is None else better(self.best, value)
            super().on_epoch_end(epoch, logs)

    return BestSoFarPruning(trial, monitor)


def _close_trial_run(trial, status: str, state: str) -> None:
    for run_id in trial_runs(trial.study.study_name, trial):
        _end_trial_run(run_id, status, state)


def _run_trials(spec: SweepSpec, session: Session, seed: int | None, index=None) -> None:
    """Work on the sweep in this process until it has its ``n_trials``: start a trial while fewer are
    ended or under way; when the last are under way elsewhere, wait, failing any whose worker stopped
    beating (it is queued again, and run here). The data is opened once here (or handed in)."""
    import logging

    import mlflow
    import optuna

    if spec.tracking_uri:
        mlflow.set_tracking_uri(spec.tracking_uri)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = open_study(spec, seed)
    space = load_space(spec.base.arch, spec.space_path)
    index = index if index is not None else DataSpec.of_config(spec.base).open()
    objective = _objective(spec, session, space, index)
    while True:
        optuna.storages.fail_stale_trials(study)
        c = session.counts(study)
        if c["ended"] >= session.n_trials:
            return
        if c["ended"] + c["live"] >= session.n_trials and not c["waiting"]:
            time.sleep(SETTINGS.heartbeat_interval / 2)  # the last trials run elsewhere; take over if they die
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def _worker(spec: SweepSpec, session: Session, seed: int | None) -> None:  # pragma: no cover - a child process
    import signal

    from dfk.runs import entry
    from dfk.runs.lifecycle import stop_as_interrupt

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, stop_as_interrupt)  # stopped by its parent: end the trial's run KILLED
    entry.disown()  # under mlflow run, the entry point's run is the parent's: each trial is a run of its own
    try:
        _run_trials(spec, session, seed)
    except KeyboardInterrupt:
        pass
