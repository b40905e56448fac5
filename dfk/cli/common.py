"""What every ``dfk`` command shares: the Typer apps, one-line user errors, training overrides.

Every error a user can cause ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from dfk.errors import UserError, server_refusal
from dfk.runs.entry import command

app = typer.Typer(
    name="dfk",
    help="DeepFake-vs-Real image classifier as an MLflow workflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Built-in synthetic set and data checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
OFFLINE_COMMANDS = ("params", "models", "data")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"dfk: error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Turn :class:`UserError` into one stderr line and exit 2; Ctrl-C or SIGTERM into exit 130.

    The command runs as :func:`dfk.runs.entry.command`: SIGTERM stops it the way Ctrl-C does, and
    under ``mlflow run`` the entry point's run ends with it if it left that run open.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with command():
                return fn(*args, **kwargs)
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except Exception as exc:
            if (refused := server_refusal(exc)) is None:
                raise
            _fail(refused)
        except KeyboardInterrupt:
            typer.echo("dfk: interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


#: Commands that take training parameters also take them as ``--key value``: the form ``mlflow run``
#: appends for a -P parameter its entry point does not declare (``mlflow run . -e cnn -P dropout=0.3``).
TRAINING_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def parse_overrides(pairs: List[str] | None, ctx: typer.Context | None = None) -> dict[str, str]:
    """``-P key=value`` pairs, then any ``--key value`` pairs left over on the command line."""
    from dfk.config import parse_pairs

    out = parse_pairs(pairs or [], lambda pair: f"parameter {pair!r} is not KEY=VALUE (e.g. -P epochs=5)")
    extra = list(ctx.args) if ctx is not None else []
    while extra:
        key = extra.pop(0)
        if not key.startswith("--") or not extra:
            raise UserError(f"unexpected argument {key!r}; training parameters are -P KEY=VALUE (see `dfk params`)")
        out[key[2:].replace("-", "_")] = extra.pop(0)
    return out


def _unset(value: str | None) -> str | None:
    """An empty option (how an MLproject entry point passes "not given") as not given."""
    return value or None


def _quiet_tensorflow() -> None:
    """Keep the terminal to what a user acts on: progress, results, real warnings."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for message in (
        "The specified dataset source can be interpreted in multiple ways",  # a local folder is a local folder
        "Hint: Inferred schema contains integer column",  # the dataset's label column is never missing
        "`shuffle=True` was passed",
        "Your input ran out of data",  # Keras learns the epoch length of a filtered tf.data stream
    ):
        warnings.filterwarnings("ignore", message=message)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- train
ParamOption = Annotated[
    Optional[List[str]],
    typer.Option("--param", "-P", help="KEY=VALUE override of a training parameter (see `dfk params`); repeatable."),
]
ArchOption = Annotated[Optional[str], typer.Option(help="Architecture (see `dfk models`).")]
DataDirOption = Annotated[Optional[str], typer.Option("--data-dir", "-d", help="Image folder; default: the built-in set.")]

ExperimentScope = Annotated[Optional[str], typer.Option(
    help="Experiment whose training runs to consider; default: every experiment (mlflow run puts runs "
         "in the experiment it is given, Default without --experiment-name).")]



def _report_skip(path: Path, reason: str) -> None:
    typer.echo(f"dfk: skipped {path}: {reason}", err=True)


# The options a sweep takes, shared by `dfk tune` and the sweep pipeline.
ObjectiveOption = Annotated[str, typer.Option(help="Per-epoch validation metric to optimise.")]
PrunerOption = Annotated[str, typer.Option(help="median, hyperband or none.")]
WorkersOption = Annotated[int, typer.Option(help="Processes working on the same study.")]
