"""The ``dfk`` command line. Heavy libraries are imported inside commands so ``--help`` is fast.

Commands live by topic in this package (training, data, registry, explain); each is a thin layer:
arguments in, one library call out. Every error a user can cause ends in one line on stderr and
exit code 2 (:func:`dfk.cli.common.user_errors`).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

# Each module registers its commands on app; this order is the order `dfk --help` lists them in.
from dfk.cli import training, data, registry, explain  # noqa: F401, I001
from dfk.cli import weights, spark  # noqa: F401, I001
from dfk.cli.common import OFFLINE_COMMANDS, _fail, app
from dfk.errors import unreachable_server


@app.callback()
def _everywhere(
    ctx: typer.Context,
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
        help="MLflow tracking store or server (sqlite:///..., http://host:5000, databricks); default: "
             "MLflow's own (sqlite:///mlflow.db here).")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", envvar="DFK_VERBOSE", show_envvar=True,
        help="Show TensorFlow's own start-up lines (oneDNN, CUDA, devices), which dfk hides by default.")] = False,
) -> None:
    """DeepFake-vs-Real image classifier as an MLflow workflow."""
    if verbose:  # decided here, before any command imports TensorFlow (which reads it once, at load)
        import dfk

        dfk.set_verbose()
    if tracking_uri:  # the environment, so that worker processes and mlflow run's children see it too
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    asks_help = ctx.resilient_parsing or any(a in ("--help", "-h") for a in sys.argv[1:])
    if asks_help:
        return
    import importlib.util

    # `pip install dfk` alone brings no TensorFlow on x86_64: the cpu or gpu extra chooses the build.
    if ctx.invoked_subcommand not in (*OFFLINE_COMMANDS, "compare", "register") and \
            importlib.util.find_spec("tensorflow") is None:
        _fail("TensorFlow is not installed; pip install 'dfk[cpu]', or 'dfk[gpu]' on a machine with an NVIDIA GPU "
              "(from a checkout: pip install -e '.[cpu]')")
    if ctx.invoked_subcommand in (*OFFLINE_COMMANDS, "weights"):
        return
    if tracking_uri and (why := unreachable_server(tracking_uri)):
        _fail(why)
    _open_store()


def _open_store() -> None:
    """Before a command: end KILLED the runs a killed process left RUNNING (:mod:`dfk.runs.liveness`), and
    say so. A store that does not exist yet is left for the command to create (or not); one that
    fails is the command's to report."""
    import logging

    from dfk.runs.tracking import ready_store, store_exists

    try:
        if not store_exists():
            return
        ready_store()
        from dfk.runs.liveness import end_orphaned_runs

        for run, why in end_orphaned_runs():
            typer.echo(f"dfk: run {run.info.run_id} ({run.info.run_name}) was left RUNNING but {why}: ended it KILLED",
                       err=True)
    except Exception as exc:
        logging.getLogger("dfk").debug("orphaned runs not checked: %s", exc)




def main() -> None:  # pragma: no cover - console entry for `python -m dfk`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
