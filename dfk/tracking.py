"""MLflow plumbing shared by every command that writes a run."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow

import dfk

DEFAULT_EXPERIMENT = "dfk"


def use_experiment(name: str | None) -> None:
    """Select the experiment: ``name``, else the one MLflow's environment names, else ``dfk``.

    Under ``mlflow run`` the run already exists in its experiment, so nothing changes.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return
    if name:
        mlflow.set_experiment(name)
    elif not (os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
        mlflow.set_experiment(DEFAULT_EXPERIMENT)


@contextlib.contextmanager
def run(run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C."""
    active = mlflow.start_run(run_name=run_name if not os.environ.get("MLFLOW_RUN_ID") else None,
                              tags=dict(tags or {}))
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def take_entry_run() -> str | None:
    """The run ``mlflow run`` created for a multi-run entry point (tune, main), taken out of the
    environment so that the runs this process starts are runs of their own, not that one resumed."""
    return os.environ.pop("MLFLOW_RUN_ID", None)


#: Suffix of the param that holds what an "auto" parameter resolved to.
RESOLVED = "_resolved"


def log_params_once(params: Mapping[str, Any]) -> None:
    """Log params, skipping keys the run already has (``mlflow run`` logs its own -P values).

    Where ``mlflow run`` logged ``auto``, the value it resolved to is logged as ``<key>_resolved``.
    """
    from dfk.config import AUTO

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: ("" if v is None else v) for k, v in params.items() if k not in existing}
    fresh.update({f"{k}{RESOLVED}": v for k, v in params.items() if existing.get(k) == AUTO and v is not None})
    if fresh:
        mlflow.log_params(fresh)


def git_commit() -> str:
    root = Path(dfk.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def standard_tags() -> dict[str, str]:
    return {"dfk_version": dfk.__version__, "git_commit": git_commit()}


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
    mlflow.log_input(ds, context=context, tags=tags)
    mlflow.set_tags({"dataset_name": name, "dataset_fingerprint": index.fingerprint})
    mlflow.log_dict(index.summary(), "data/dataset.json")
    bad = "\n".join(f"{p}\t{reason}" for p, reason in index.bad_files)
    mlflow.log_text(bad + ("\n" if bad else ""), "data/bad_files.tsv")
