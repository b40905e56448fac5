"""MLflow plumbing shared by every command that writes a run."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow

import dfk
from dfk.errors import UserError
from dfk.runs.entry import hidden_from_mlflow, open_entry_run, take_entry_run
from dfk.runs.lifecycle import end_status
from dfk.runs.liveness import Heartbeat
from dfk.settings import SETTINGS

#: Finished runs that trained a model, sweep trials included (sweep and job parents, evaluations
#: and comparisons have no ``runs:/`` model of their own or no ``arch``).
TRAINED = "attributes.status = 'FINISHED' and tags.arch != '' and tags.model_uri LIKE 'runs:/%'"


def _local_store(tracking_uri: str | None = None) -> Path | None:
    """The file of a ``sqlite:///`` store or the folder of a ``file:`` store; None for a server or an
    in-memory store."""
    from urllib.parse import unquote, urlparse

    uri = tracking_uri or mlflow.get_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        return Path(unquote(uri[len("sqlite:///"):])).resolve()
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a workspace, not folders
        return None
    if scheme in ("", "file"):
        return Path(unquote(urlparse(uri).path if scheme else uri)).expanduser().resolve()
    return None


def store_folder(tracking_uri: str | None = None) -> Path | None:
    """The folder of a local tracking store (a ``sqlite:///`` file or a ``file:`` folder), where dfk
    keeps what belongs beside it; None for a tracking server or an in-memory store."""
    local = _local_store(tracking_uri)
    return local.parent if local else None


def beside_store(tracking_uri: str | None = None) -> Path:
    """Where dfk keeps files that belong with the tracking store (the sweep's Optuna database, run
    checkpoints): the local store's folder, else (a tracking server) dfk's cache folder."""
    from dfk.data.synth import cache_dir

    return store_folder(tracking_uri) or cache_dir()


def store_exists(tracking_uri: str | None = None) -> bool:
    """Whether the tracking store is there already: a local store's file or folder exists (MLflow
    creates it on first use); a server or any other store is taken to exist."""
    local = _local_store(tracking_uri)
    return local is None or local.exists()


def ready_store(tracking_uri: str | None = None) -> None:
    """Create (or migrate) a local SQLite store's tables one process at a time.

    MLflow does it on first use in every process, and processes that start together on a fresh
    ``mlflow.db`` race: all but one fail with "table ... already exists". A lock file beside the
    database (``.mlflow.db.lock``) makes the others wait; afterwards it costs one ``flock``."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    local = _local_store(uri)
    if local is None or not uri.startswith("sqlite:") or uri in _READY:
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: MLflow's own behaviour
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.with_name(f".{local.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow.search_experiments(max_results=1)  # the tracking store's tables
        mlflow.MlflowClient().search_registered_models(max_results=1)  # the registry's (same file)
    _READY.add(uri)


#: Stores :func:`ready_store` has readied in this process.
_READY: set[str] = set()


def set_experiment(name: str):
    """``mlflow.set_experiment``; a missing experiment of a SQLite store is created with its artifacts
    beside the database (``<store folder>/mlruns/<name>``). MLflow's own default there is ``./mlruns``
    of whichever process creates it, which under ``mlflow run`` is the project checkout. A ``file:``
    store keeps artifacts inside itself already, and a server decides for itself."""
    import re

    ready_store()  # the first process on a fresh store creates its tables; the others wait for it
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(name) is None and (folder := store_folder(uri)):
        try:
            mlflow.create_experiment(name, artifact_location=str(folder / "mlruns" / re.sub(r"[^\w.-]", "_", name)))
        except mlflow.exceptions.MlflowException:
            pass  # another process created it meanwhile
    return mlflow.set_experiment(name)


def use_experiment(name: str | None) -> None:
    """Select the experiment: ``name``, else the one MLflow's environment names, else dfk's own.

    Under ``mlflow run`` the command's run is the entry point's, already in its experiment, so nothing
    changes while no run has taken that one.
    """
    if open_entry_run():
        return
    if name:
        set_experiment(name)
    elif not (os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
        set_experiment(SETTINGS.experiment)


def trained_runs(experiment: str | None = None, order_by: list[str] | None = None, parent_run_id: str | None = None,
                 output_format: str = "list", max_results: int = 1000, run_ids: tuple[str, ...] = (),
                 fingerprint: str | None = None):
    """Finished training runs of ``experiment``, or of every experiment when it is None: ``mlflow
    run`` puts runs in whichever experiment it is given (``Default`` without --experiment-name),
    and ``dfk register``/``compare`` find them there with no flag. ``run_ids``: only those runs (a
    pipeline's, some reused from an earlier run of it); ``fingerprint``: only runs on that data
    (:attr:`dfk.data.scan.DatasetIndex.fingerprint`)."""
    if experiment and mlflow.get_experiment_by_name(experiment) is None:
        raise UserError(f"experiment {experiment!r} does not exist; train a model first (dfk train)")
    where = TRAINED + (f" and tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else "")
    where += f" and attributes.run_id IN ({', '.join(repr(str(r)) for r in run_ids)})" if run_ids else ""
    where += f" and tags.dataset_fingerprint = '{fingerprint}'" if fingerprint else ""
    scope = {"experiment_names": [experiment]} if experiment else {"search_all_experiments": True}
    return mlflow.search_runs(filter_string=where, order_by=order_by, output_format=output_format,
                              max_results=max_results, **scope)


@contextlib.contextmanager
def parent_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The parent run of a command that starts runs of its own (the whole job, a sweep).

    Under ``mlflow run`` it is the entry point's run (its experiment wins); else a new run in
    ``experiment``. Yields ``(run_id, experiment name)`` and ends the run as :func:`ending` does.
    """
    run_id, experiment = open_parent_run(experiment, run_name, tags)
    with ending(run_id):
        yield run_id, experiment


def open_parent_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> tuple[str, str]:
    """Start :func:`parent_run`'s run without ending it: ``(run_id, experiment name)``."""
    ready_store()
    client = mlflow.MlflowClient()
    tags = {**standard_tags(), **tags}
    run_id = take_entry_run()
    if run_id:
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    else:
        exp = set_experiment(experiment)
        run_id = client.create_run(exp.experiment_id, run_name=run_name, tags=tags).info.run_id
    return run_id, experiment


@contextlib.contextmanager
def ending(run_id: str, end: Callable[[str], bool] = lambda status: True,
           finish: Callable[[str, str], None] | None = None) -> Iterator[None]:
    """Run ``run_id`` carries this process's heartbeat while the block runs, and ends when it ends with
    :func:`dfk.runs.lifecycle.end_status` (FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM).
    ``end(status)`` may decline (another process still works under the run and will end it);
    ``finish(run_id, status)`` ends it (default: the client's ``set_terminated``)."""
    finish = finish or mlflow.MlflowClient().set_terminated
    try:
        with Heartbeat(run_id):
            yield
    except BaseException as exc:
        if end(status := end_status(exc)):
            finish(run_id, status)
        raise
    if end(status := end_status(None)):
        finish(run_id, status)


@contextlib.contextmanager
def run(run_name: str, tags: Mapping[str, str] | None = None, run_id: str | None = None) -> Iterator[Any]:
    """The active run of a block, ended as :func:`ending` ends one: ``run_id`` reopened; else under
    ``mlflow run`` the entry point's run, if no other run of this command took it; else a new one."""
    if run_id:
        Heartbeat(run_id).beat()  # before the run is RUNNING again, so no one takes it for orphaned
        active = mlflow.start_run(run_id=run_id)
    elif entry := take_entry_run():
        active = mlflow.start_run(run_id=entry, tags=dict(tags or {}))  # its name stays mlflow run's
    else:
        with hidden_from_mlflow():
            active = mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
    with ending(active.info.run_id, finish=lambda _, status: mlflow.end_run(status)):
        yield active


@contextlib.contextmanager
def local_output(given: str | os.PathLike | None, default: str) -> Iterator[tuple[Path, str | None]]:
    """Where a command writes a file or folder it is not told where to put: ``given``; else, under
    ``mlflow run`` (whose working folder is the project checkout), a temporary place whose contents
    the command keeps in the entry point's run; else ``default`` here. Yields ``(path, entry run id
    or None)``: with a run id, the caller logs the path to that run before the block ends."""
    import tempfile

    run_id = None if given else open_entry_run()
    if not run_id:
        yield Path(given or default), None
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / Path(default).name, run_id


#: Suffix of the param that holds what an "auto" parameter resolved to.
RESOLVED = "_resolved"


def log_params_once(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log params to ``run_id`` (default: the active run) once, with the values actually used.

    ``mlflow run`` has already logged its entry point's parameters as typed (``auto``, an empty
    storage, ``4.0``); a key it logged is not logged again, and where the value used differs
    (``auto`` resolved, a default filled in) that value is logged as ``<key>_resolved``.
    """
    run_id = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    existing = client.get_run(run_id).data.params
    used = {k: "" if v is None else str(v) for k, v in params.items()}
    fresh = {k: v for k, v in used.items() if k not in existing}
    fresh.update({f"{k}{RESOLVED}": v for k, v in used.items()
                  if k in existing and existing[k] != v and v and f"{k}{RESOLVED}" not in existing})
    if fresh:
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in fresh.items()])


def run_param(run, key: str) -> str | None:
    """A run's parameter as used: ``<key>_resolved`` where there is one."""
    params = run.data.params
    return params.get(f"{key}{RESOLVED}", params.get(key))


def run_data(run):
    """The images a training run used and how it split them (:class:`dfk.data.scan.DataSpec`), or None."""
    from dfk.config import TrainConfig
    from dfk.data.scan import DataSpec

    from dfk.config import BUILTIN_DATA

    data_dir = run.data.tags.get("dataset_dir")
    if not data_dir:  # a run from before the tag: its data_dir param, shell-quoted if mlflow run logged it
        import shlex

        logged = run_param(run, "data_dir") or ""
        data_dir = (shlex.split(logged) or [""])[0] if logged.startswith("'") else logged
        if data_dir != BUILTIN_DATA and not os.path.isabs(data_dir):
            return None  # relative to a folder nobody recorded: unknown
    if not data_dir:
        return None
    val_split, seed = run_param(run, "val_split"), run_param(run, "seed")
    return DataSpec(data_dir, float(val_split) if val_split else TrainConfig.val_split,
                    int(float(seed)) if seed else TrainConfig.seed, run.data.tags.get("dataset_fingerprint", ""))


def git_commit() -> str:
    root = Path(dfk.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def standard_tags() -> dict[str, str]:
    return {"dfk_version": dfk.__version__, "git_commit": git_commit()}


def log_input(dataset, context: str, tags: dict[str, str]) -> None:
    """``mlflow.log_input``, again once if another run logged the same new dataset into the same
    experiment at the same moment: MLflow's SQL store checks for the dataset, then inserts it, so
    of two runs starting together (two sweep workers, two team members) one fails on the dataset's
    key ("dataset_pk" on PostgreSQL, "UNIQUE constraint failed: datasets..." on SQLite) and its
    whole insert is rolled back; the second try finds the dataset and links it."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except MlflowException as exc:
        if "dataset_pk" not in str(exc) and "datasets." not in str(exc):
            raise
        mlflow.log_input(dataset, context=context, tags=tags)


def log_dataset(index, context: str = "training") -> None:
    """Log the scanned folder as an MLflow dataset input: name, fingerprint, counts per split/class."""
    import pandas as pd

    rows = [{"path": os.path.relpath(p, index.root), "label": y, "split": s}
            for s, items in index.samples.items() for p, y in items]
    df = pd.DataFrame(rows, columns=["path", "label", "split"])
    name = Path(index.root).name
    ds = mlflow.data.from_pandas(df, source=index.root, targets="label", name=name, digest=index.fingerprint)
    counts = index.counts()
    tags = {f"{split}_{cls}": str(n) for split, c in counts.items() for cls, n in c.items()}
    tags["fingerprint"] = index.fingerprint
    log_input(ds, context, tags)
    mlflow.set_tags({"dataset_name": name, "dataset_fingerprint": index.fingerprint,
                     "dataset_dir": index.spec.data_dir if index.spec else index.root})
    mlflow.log_dict(index.summary(), "data/dataset.json")
    bad = "\n".join(f"{p}\t{reason}" for p, reason in index.bad_files)
    mlflow.log_text(bad + ("\n" if bad else ""), "data/bad_files.tsv")
