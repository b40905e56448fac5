"""The two steps every figure dfk writes shares: a headless pyplot, and save-and-close."""

from __future__ import annotations

from pathlib import Path

#: Resolution of every PNG dfk writes.
DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are files, never windows (servers have no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    """Lay out, write and close ``fig`` (closing keeps long sweeps from holding every figure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
