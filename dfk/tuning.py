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
import dataclasses
import math
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfk.config import TrainConfig
from dfk.data.scan import DataSpec
from dfk.errors import UserError
from dfk.settings import SETTINGS

#: Per-epoch Keras metrics a sweep can optimise.
OBJECTIVES = ("val_auc", "val_accuracy", "val_loss", "val_precision", "val_recall")
PRUNERS = ("median", "hyperband", "none")
#: Parameters a search space may not touch (they define the sweep, not a trial).
FIXED = ("arch", "data_dir", "seed", "val_split", "gradcam_images")

#: The default space. learning rate log-uniform; the rest the knobs users ask about first.
BASE_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.1, "high": 0.6},
    "dense_units": {"type": "categorical", "choices": [128, 256, 512]},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "augment": {"type": "categorical", "choices": ["flip", "flip,jpeg", "flip,jpeg,blur", "flip,rotation,zoom,brightness"]},
}
#: Added for architectures with a pretrained backbone.
BACKBONE_SPACE: dict[str, dict[str, Any]] = {
    "fine_tune_at": {"type": "int", "low": 0, "high": 60, "step": 10},
}


def default_space(arch: str) -> dict[str, dict[str, Any]]:
    from dfk.models import get_spec

    space = dict(BASE_SPACE)
    if get_spec(arch).pretrained:
        space.update(BACKBONE_SPACE)
    return space


def load_space(arch: str, path: str | None) -> dict[str, dict[str, Any]]:
    """The default space for ``arch`` with the YAML file's entries replacing (or, as null, removing) keys."""
    space = default_space(arch)
    if not path:
        return space
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read search space {path}: {exc.strerror}") from None
    try:
        override = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"search space {path} is not valid YAML{where}") from None
    if not isinstance(override, dict):
        raise UserError(f"search space {path} must map parameter names to ranges, e.g. dropout: {{type: float, low: 0.1, high: 0.5}}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, spec in override.items():
        if name not in fields or name in FIXED:
            tunable = sorted(fields - set(FIXED))
            raise UserError(f"search space {path}: unknown parameter {name!r}; tunable: {', '.join(tunable)}")
        if spec is None:
            space.pop(name, None)
            continue
        _check_spec(path, name, spec)
        space[name] = spec
    return space


def _check_spec(path: str, name: str, spec: Any) -> None:
    kinds = ("float", "int", "categorical")
    if not isinstance(spec, dict) or spec.get("type") not in kinds:
        raise UserError(f"search space {path}: {name} needs type: float, int or categorical")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise UserError(f"search space {path}: {name} needs a non-empty list of choices")
        return
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"search space {path}: {name} needs numeric low and high") from None
    if not low < high:
        raise UserError(f"search space {path}: {name} needs low < high")
    if spec.get("log") and low <= 0:
        raise UserError(f"search space {path}: {name} is log-uniform, so low must be above 0")


def sample(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                          log=bool(spec.get("log")))
        else:
            out[name] = trial.suggest_categorical(name, spec["choices"])
    return out


@dataclass
class SweepSpec:
    """Everything one sweep needs; the same object goes to every worker process."""

    base: TrainConfig
    n_trials: int = SETTINGS.n_trials
    objective: str = SETTINGS.objective
    direction: str = ""  # empty: minimize a loss, maximize anything else
    pruner: str = SETTINGS.pruner
    study_name: str = ""
    storage: str = ""
    space_path: str | None = None
    workers: int = SETTINGS.workers
    experiment: str = SETTINGS.tune_experiment
    tracking_uri: str = ""

    def validate(self) -> None:
        if self.n_trials < 1:
            raise UserError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.workers < 1:
            raise UserError(f"workers must be at least 1, got {self.workers}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if not self.direction:
            from dfk.evaluation import lower_is_better

            self.direction = "minimize" if lower_is_better(self.objective) else "maximize"
        if self.direction not in ("maximize", "minimize"):
            raise UserError(f"direction must be maximize or minimize, got {self.direction!r}")
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        load_space(self.base.arch, self.space_path)


#: File name of the default Optuna storage.
OPTUNA_DB = "optuna.db"


def default_storage(tracking_uri: str) -> str:
    """SQLite ``optuna.db`` beside the tracking store: in the folder of a ``sqlite:///`` database or
    of a ``file:`` store's folder; for a tracking server, in dfk's cache folder (a sweep that spans
    machines names a shared ``--storage`` instead). Never simply the working directory, which under
    ``mlflow run`` is the project checkout."""
    from dfk.tracking import beside_store

    folder = beside_store(tracking_uri)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / OPTUNA_DB}"


def pruner_settings(name: str, epochs: int) -> dict[str, int]:
    """The arguments of the pruner ``name`` for trials of ``epochs`` epochs (their first phase)."""
    if name == "median":
        # Three trials finish before any is judged (optuna's 5 would leave a quarter of a 20-trial
        # sweep unjudged). A model trained from scratch shows little in its first epochs (val AUC
        # near 0.5 whatever its settings), so the first tenth of the budget (at least one epoch) is
        # never judged; then a trial stops once its best so far is below the median of the finished
        # trials at that epoch (optuna's steps are epochs, from 0).
        return {"n_startup_trials": 3, "n_warmup_steps": max(1, epochs // 10)}
    return {}  # hyperband: optuna's brackets, from 1 epoch to the longest finished trial


def describe_pruner(name: str, epochs: int) -> str:
    """``pruner_settings`` on one line, e.g. ``n_startup_trials=3, n_warmup_steps=2``."""
    return ", ".join(f"{k}={v}" for k, v in pruner_settings(name, epochs).items()) or "optuna's defaults"


def make_pruner(name: str, epochs: int):
    import optuna

    kinds = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "none": optuna.pruners.NopPruner}
    return kinds[name](**pruner_settings(name, epochs))


def open_study(spec: SweepSpec, seed: int | None = None):
    """The sweep's study, created if new, on a storage whose running trials beat a heartbeat: a trial
    whose worker dies (killed, preempted, its machine gone) is failed by a live worker, its MLflow run
    ended KILLED, and the trial queued again with the same parameters."""
    return _create_or_load(spec, seed)[0]


def _create_or_load(spec: SweepSpec, seed: int | None = None):
    """:func:`open_study`, and whether this call created the study."""
    import warnings

    import optuna

    from sqlalchemy.exc import IntegrityError

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    engine = {"connect_args": {"timeout": 60}} if spec.storage.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(
                spec.storage, engine_kwargs=engine, heartbeat_interval=SETTINGS.heartbeat_interval,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=SETTINGS.max_retry))
            break
        except IntegrityError:  # workers starting together on a new storage: another one made its tables
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
        except Exception as exc:  # a malformed URL, a server that refuses: before any run exists
            raise UserError(f"cannot open the study storage {redact(spec.storage)}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    sampler, pruner = optuna.samplers.TPESampler(seed=seed), make_pruner(spec.pruner, spec.base.epochs)
    try:  # atomic: of several machines starting one new study, exactly one creates it
        return optuna.create_study(study_name=spec.study_name, storage=storage, direction=spec.direction,
                                   sampler=sampler, pruner=pruner), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner), False


class RetryStaleTrial:
    """Optuna's ``RetryHeartbeatStaleTrialCallback``, which first ends the dead trial's MLflow run
    KILLED (tagged ``optuna_state`` FAIL and ``stale``): its worker can no longer end it."""

    def __init__(self, max_retry: int) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study, trial) -> None:
        import mlflow

        self.retry(study, trial)  # first: until the copy is queued, the dead trial looks ended to others
        try:
            client = mlflow.MlflowClient()
            for run_id in trial_runs(study.study_name, trial):
                client.set_tag(run_id, "stale", f"no heartbeat from {trial.user_attrs.get(WORKER_ATTR, 'its worker')}")
                _end_trial_run(run_id, "KILLED", "FAIL")
        except mlflow.exceptions.MlflowException as exc:  # the sweep goes on; the run stays as it was
            import logging

            logging.getLogger(__name__).warning("could not end the run of dead trial %d: %s", trial.number, exc)


def trial_runs(study_name: str, trial) -> list[str]:
    """The MLflow run of a trial: recorded on the trial when its training started, else found by its
    tags (a trial can fail before training starts, once its run exists)."""
    import mlflow

    if trial.user_attrs.get(RUN_ATTR):
        return [trial.user_attrs[RUN_ATTR]]
    where = f"tags.optuna_study = '{study_name}' and tags.optuna_trial = '{trial.number}'"
    return [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, filter_string=where,
                                                      output_format="list")]


#: Trial user attributes: the trial's MLflow run (recorded when training starts), the worker
#: (host:pid) that ran it, and whether it was a surplus start (see :func:`_objective`).
RUN_ATTR, WORKER_ATTR, SURPLUS_ATTR = "mlflow_run_id", "worker", "surplus"
#: Trial user attribute of a trial stopped by Ctrl-C or SIGTERM (it does not count toward n_trials).
INTERRUPTED_ATTR = "interrupted"
#: Study user attributes of the sweep in progress, which every worker that joins reads: its parent
#: run, the number of its first trial and how many trials it runs.
PARENT_ATTR, FIRST_ATTR, N_ATTR = "mlflow_parent_run_id", "sweep_first_trial", "sweep_n_trials"
#: Seconds a worker waits for the process that created a new study to record its sweep.
JOIN_WAIT_S = 60


@dataclass
class Session:
    """One sweep of a study: ``n_trials`` trials numbered from ``first``, children of ``parent_run_id``."""

    parent_run_id: str
    first: int
    n_trials: int
    experiment: str
    joined: bool  # this process joined a sweep another process started

    def counts(self, study, before: int | None = None) -> dict[str, int]:
        """This sweep's trials (numbered below ``before``, if given): ``ended`` (complete, pruned, or
        failed by their own error), ``live`` (running or queued) and ``waiting`` (queued); a trial
        whose worker died and that was queued again counts once, as its retry."""
        import optuna

        trials, retried = self.trials(study)
        trials = [t for t in trials if before is None or t.number < before]
        return {"ended": sum(_ended(t, retried) for t in trials), "live": sum(_live(t) for t in trials),
                "waiting": sum(t.state == optuna.trial.TrialState.WAITING for t in trials)}

    def trials(self, study) -> tuple[list, set[int]]:
        """This sweep's trials, and the numbers of those queued again after their worker died."""
        trials = [t for t in study.get_trials(deepcopy=False) if t.number >= self.first]
        return trials, {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _ended(trial, retried: set[int]) -> bool:
    """Complete, pruned, or failed by its own error (not queued again, not a surplus start, not stopped)."""
    import optuna

    S = optuna.trial.TrialState
    return trial.state in (S.COMPLETE, S.PRUNED) or (
        trial.state == S.FAIL and trial.number not in retried
        and not trial.user_attrs.get(SURPLUS_ATTR) and not trial.user_attrs.get(INTERRUPTED_ATTR))


def _live(trial) -> bool:
    import optuna

    return trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


def join_or_start(spec: SweepSpec, study, created: bool) -> Session:
    """Join the sweep in progress on ``study`` (its parent run still RUNNING), or start one: a parent
    run, recorded in the study's user attributes so that workers on other machines join it. A study
    another process has just created gets a moment to record its sweep. (Two machines resuming an
    old study at the same moment each start a sweep: start one first, then the others.)"""
    import mlflow

    from dfk import tracking

    attrs = study.user_attrs
    deadline = time.monotonic() + JOIN_WAIT_S
    while not created and PARENT_ATTR not in attrs and not study.get_trials(deepcopy=False) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        attrs = study.user_attrs
    parent = attrs.get(PARENT_ATTR)
    if (run := _running(parent)) is not None:
        ours = {"arch": spec.base.arch, "objective": spec.objective, "direction": spec.direction}
        differ = {k: run.data.params[k] for k, v in ours.items() if run.data.params.get(k, v) != v}
        if differ:
            raise UserError(f"the sweep in progress on study {spec.study_name!r} (parent run {parent}) has "
                            f"{', '.join(f'{k} {v}' for k, v in differ.items())}; join it with the same settings")
        experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id).name
        return Session(parent, int(attrs[FIRST_ATTR]), int(attrs[N_ATTR]), experiment, joined=True)
    tags = {"arch": spec.base.arch, "optuna_study": spec.study_name, "sweep": "parent"}
    parent, experiment = tracking.open_parent_run(spec.experiment, f"tune-{spec.base.arch}-{spec.study_name}", tags)
    first = len(study.get_trials(deepcopy=False))
    for key, value in ((FIRST_ATTR, first), (N_ATTR, spec.n_trials), (PARENT_ATTR, parent)):
        study.set_user_attr(key, value)
    return Session(parent, first, spec.n_trials, experiment, joined=False)


def _running(run_id: str | None):
    """The run ``run_id`` if it is still RUNNING, else None."""
    import mlflow

    if not run_id:
        return None
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:  # deleted, or another tracking store
        return None
    return run if run.info.status == "RUNNING" else None


def _objective(spec: SweepSpec, session: Session, space, index):
    import mlflow
    import optuna

    from dfk.training import train

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
        except optuna.TrialPruned:
            _close_trial_run(trial, "KILLED", "PRUNED")
            raise
        except KeyboardInterrupt:  # stopped, not finished: another worker runs a trial in its place
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise
        except Exception:
            _close_trial_run(trial, "FAILED", "FAIL")
            raise
        values = [v for v in result.history.get(spec.objective, []) if math.isfinite(v)]
        if not values:
            _close_trial_run(trial, "FAILED", "FAIL")
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


def _end_trial_run(run_id: str, status: str, state: str) -> None:
    """Give a trial's run its Optuna state, its status and the epochs it trained."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "optuna_state", state)
    client.set_terminated(run_id, status)
    if client.get_run(run_id).data.metrics.get("epochs_trained") is None:
        client.log_metric(run_id, "epochs_trained", len(client.get_metric_history(run_id, "loss")))


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

    from dfk.cli import stop_as_interrupt

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, stop_as_interrupt)  # stopped by its parent: end the trial's run KILLED
    try:
        _run_trials(spec, session, seed)
    except KeyboardInterrupt:
        pass


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

    from dfk import tracking

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


def redact(url: str) -> str:
    """A storage URL fit to log and print: user and password replaced by ``***`` (a password may
    itself hold ``@``, so the host starts after the last one)."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0]
    if not sep or "@" not in netloc:  # no credentials (a file path may hold an @ of its own)
        return url
    return f"{scheme}://***@{rest[rest.rindex('@', 0, len(netloc)) + 1:]}"


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

    from dfk.plots import pyplot, save

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
