"""The Optuna study behind a sweep: its spec, storage, pruner, and the session workers join.

Running trials beat a heartbeat in the storage: a worker that dies mid-trial has its trial failed by
a live worker (:class:`RetryStaleTrial`), its MLflow run ended KILLED, and the trial run again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dfk.config import TrainConfig
from dfk.errors import UserError
from dfk.settings import SETTINGS
from dfk.tuning.space import OBJECTIVES, PRUNERS, load_space

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
            from dfk.metrics.binary import lower_is_better

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
    from dfk.runs.tracking import beside_store

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

    from dfk.runs import tracking

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


def _end_trial_run(run_id: str, status: str, state: str) -> None:
    """Give a trial's run its Optuna state, its status and the epochs it trained."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "optuna_state", state)
    client.set_terminated(run_id, status)
    if client.get_run(run_id).data.metrics.get("epochs_trained") is None:
        client.log_metric(run_id, "epochs_trained", len(client.get_metric_history(run_id, "loss")))


def redact(url: str) -> str:
    """A storage URL fit to log and print: user and password replaced by ``***`` (a password may
    itself hold ``@``, so the host starts after the last one)."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0]
    if not sep or "@" not in netloc:  # no credentials (a file path may hold an @ of its own)
        return url
    return f"{scheme}://***@{rest[rest.rindex('@', 0, len(netloc)) + 1:]}"
