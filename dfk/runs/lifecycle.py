"""How a run ends: one status rule, and signals that stop a command the way Ctrl-C does."""

from __future__ import annotations


def stop_as_interrupt(signum, frame) -> None:
    """SIGTERM handler: raise KeyboardInterrupt, so the runs a command opened end KILLED."""
    raise KeyboardInterrupt


def end_status(exc: BaseException | None) -> str:
    """The MLflow status a run ends with: none raised -> FINISHED, an interrupt -> KILLED, else FAILED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
