"""The run ``mlflow run`` opened for this command's entry point: read in one place, taken at most once,
ended with the command.

``mlflow run`` starts an entry point's command with ``MLFLOW_RUN_ID`` naming a run it created. A
command that logs one run makes it that run (:func:`dfk.runs.tracking.run` takes it); a command that
starts runs of its own takes it as their parent (a sweep, the main job) or as a pointer to the sweep
it joins; a command that opens no run (register, data synth) leaves it open, and :func:`command`
ends it with the command. Only this module reads the variable. Taking the run is recorded here, not
by removing the variable, so what a reader gets does not depend on who read first; the environment
stays as ``mlflow run`` set it for the processes this one starts (a sweep's workers :func:`disown`
the run), except that MLflow's fluent API itself drops the variable when a run it started ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from dfk.runs.lifecycle import KILLED, end_status, stop_as_interrupt
from dfk.runs.liveness import keep_killed, stop_with_launcher

#: The variable ``mlflow run`` names the entry point's run in.
VAR = "MLFLOW_RUN_ID"

#: The entry run of each command running in this process, as read when it started (one; more only
#: where tests run commands inside commands).
_commands: list[str | None] = []
#: Entry runs a run of this process has taken (or that belong to another process, see :func:`disown`).
_taken: set[str] = set()


def entry_run() -> str | None:
    """The run ``mlflow run`` opened for this command, taken or not; None when not under ``mlflow run``.

    Within :func:`command` it is what the variable said when the command started; outside one (a
    library call, a sweep's worker process), what it says now."""
    if _commands:
        return _commands[-1]
    return os.environ.get(VAR) or None


def open_entry_run() -> str | None:
    """The entry run if no run of this process has taken it yet, else None."""
    run_id = entry_run()
    return run_id if run_id and run_id not in _taken else None


def take_entry_run() -> str | None:
    """The entry run, for a run of this process to be, if none has taken it yet: once taken, the runs
    this process starts are runs of their own, and the command no longer ends it."""
    run_id = open_entry_run()
    if run_id:
        _taken.add(run_id)
    return run_id


def disown() -> None:
    """This process works for another one under that one's entry run (a sweep's worker inherits the
    variable): none of its runs is the entry run."""
    if run_id := entry_run():
        _taken.add(run_id)


@contextlib.contextmanager
def hidden_from_mlflow() -> Iterator[None]:
    """Out of the environment while the block starts a new run: MLflow's ``start_run`` without a run id
    resumes whichever run the variable names, taken or not. Put back as it was after the block."""
    value = os.environ.pop(VAR, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ.setdefault(VAR, value)


def end_entry_run(run_id: str, status: str) -> None:
    """End the entry run with ``status`` if it is still open."""
    import mlflow

    try:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException as exc:  # the store is gone: the command's own exit still stands
        logging.getLogger(__name__).warning("could not end run %s: %s", run_id, exc)


@contextlib.contextmanager
def command() -> Iterator[str | None]:
    """One command's hold on its entry run (yielded; None when not under ``mlflow run``).

    SIGTERM (a scheduler, ``kill``, a stopped ``mlflow run``) stops the command the way Ctrl-C does,
    so the runs it opened end KILLED; so does the death of the ``mlflow run`` that launched it. When
    the command ends, so does its entry run if no run of it took it (FINISHED, FAILED or KILLED, even
    if ``mlflow run`` was stopped first and can no longer end it); an interrupted one stays KILLED
    whatever ``mlflow run`` marks it afterwards (:func:`dfk.runs.liveness.keep_killed`)."""
    import signal

    previous = signal.signal(signal.SIGTERM, stop_as_interrupt)
    run_id = os.environ.get(VAR) or None  # the one reading, for the whole command
    _commands.append(run_id)
    if run_id:  # launched by mlflow run: stop when it is stopped
        stop_with_launcher()
    status = end_status(None)
    try:
        yield run_id
    except BaseException as exc:
        status = end_status(exc)
        raise
    finally:
        _commands.pop()
        signal.signal(signal.SIGTERM, previous)
        if run_id and run_id not in _taken:
            end_entry_run(run_id, status)
        if run_id and status == KILLED:
            keep_killed(run_id)
