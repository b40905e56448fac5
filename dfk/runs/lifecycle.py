"""How a run ends: one status rule, and the signals that stop a command the way Ctrl-C does.

Every place that ends a run (a command's own run, a sweep's parent, a trial, the entry point's run
``mlflow run`` opened) asks :func:`end_status` what to end it with. Imports nothing of dfk: every
other module of :mod:`dfk.runs` builds on this one.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

#: MLflow's names of the statuses dfk ends runs with.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def end_status(exc: BaseException | None, stops: tuple[type[BaseException], ...] = ()) -> str:
    """The MLflow status a run ends with: none raised -> FINISHED; an interrupt (Ctrl-C, SIGTERM) or
    one of ``stops`` (what the caller counts as a stop: a pruned trial) -> KILLED; anything else ->
    FAILED."""
    if exc is None:
        return FINISHED
    return KILLED if isinstance(exc, (KeyboardInterrupt, *stops)) else FAILED


def stop_as_interrupt(signum, frame) -> None:
    """SIGTERM handler: raise KeyboardInterrupt, so the runs a command opened end KILLED."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Callable[[], None]]:
    """While the block runs, Ctrl-C and SIGTERM only set a flag; the yielded ``check()`` raises
    ``KeyboardInterrupt`` where the caller chooses (between two batches of ``fit``). A second signal
    raises at once; a signal after the last check raises when the block ends. Outside the main thread
    (no signals there) nothing changes."""
    import signal

    asked: list[int] = []

    def handler(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)

    def check() -> None:
        if asked:
            raise KeyboardInterrupt

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield check
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    check()
