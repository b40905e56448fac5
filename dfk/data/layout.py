"""Where the images are: the folder layouts dfk understands, and the folder that holds one.

Two layouts, folder names matched case-insensitively:

* Kaggle: ``Train|Validation|Test / Fake|Real / *.jpg``
* flat: ``Fake|Real / *.jpg``; validation and test are carved out by a stable hash of each
  file's relative path (:func:`_split_of`), so adding files never moves existing ones between splits.

A folder whose only meaningful child holds the layout (the Kaggle archive unpacks to
``Dataset/Train|Validation|Test``) is opened there, and the folder used is said on stderr.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable

from dfk.errors import UserError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "test", "testing": "test",
}
CLASSES = {"real": 0, "fake": 1}


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _children(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if not _is_hidden(p.name))
    except PermissionError:
        raise UserError(f"cannot read folder {d} (permission denied); fix its permissions") from None


def _walk_files(d: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not _is_hidden(n))
        for name in sorted(filenames):
            if not _is_hidden(name):
                yield Path(dirpath) / name


def _class_dirs(d: Path, where: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    unknown = []
    for child in _children(d):
        if not child.is_dir():
            continue
        label = CLASSES.get(child.name.lower())
        if label is None:
            unknown.append(child.name)
        else:
            found[label] = child
    if unknown:
        raise UserError(
            f"unknown class folder {', '.join(map(repr, unknown))} in {where}; class folders must be named Fake and Real"
        )
    return found


#: The layouts, as a message shows them.
EXPECTED = "Train|Validation|Test / Fake|Real / images (or Fake|Real / images, split by --val-split)"
#: How deep :func:`locate` looks for the layout below the folder given (archive/Dataset/Train is 1).
MAX_DEPTH = 3


def _layout_at(d: Path) -> tuple[str, dict[str, Path]] | None:
    """("kaggle", split folders) or ("flat", {}) when ``d`` itself holds a layout, else None."""
    top = {c.name.lower(): c for c in _children(d) if c.is_dir()}
    splits = {SPLIT_ALIASES[n]: p for n, p in top.items() if n in SPLIT_ALIASES}
    if splits:
        return "kaggle", splits
    if any(n in CLASSES for n in top):
        return "flat", {}
    return None


def _found(d: Path, limit: int = 8) -> str:
    """A few of ``d``'s entries, for a message: ``a/, b/, notes.txt (and 12 more)``."""
    entries = [f"{c.name}/" if c.is_dir() else c.name for c in _children(d)]
    if not entries:
        return "nothing (an empty folder)"
    more = f" (and {len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def locate(data_dir: str | os.PathLike) -> tuple[Path, str, dict[str, Path]]:
    """The folder that holds the layout, the layout and its split folders (Kaggle layout).

    ``data_dir`` itself, or the one folder below it that holds a layout (followed down a chain of
    single folders, :data:`MAX_DEPTH` deep); the folder used is said on stderr when it is not
    ``data_dir``. Raises :class:`UserError` showing the expected layout and what was found.
    """
    given = Path(data_dir).expanduser()
    if not given.exists():
        raise UserError(f"data directory {given} does not exist; pass a folder with {EXPECTED}")
    if not given.is_dir():
        raise UserError(f"{given} is not a directory; pass a folder with {EXPECTED}")
    d = given
    for _ in range(MAX_DEPTH + 1):
        here = _layout_at(d)
        if here is not None:
            break
        subdirs = [c for c in _children(d) if c.is_dir()]
        holding = [c for c in subdirs if _layout_at(c) is not None]
        if len(holding) > 1:
            raise UserError(f"{d} holds several data folders ({', '.join(c.name for c in holding)}); "
                            f"pass one of them (each laid out as {EXPECTED})")
        if len(holding) == 1:
            d, here = holding[0], _layout_at(holding[0])
            break
        if len(subdirs) != 1:  # nothing to follow: the wrong folder
            break
        d = subdirs[0]
    else:
        here = None
    if here is None:
        raise UserError(f"{given} has neither Train/Validation/Test nor Fake/Real folders (nor one folder holding "
                        f"them): expected {EXPECTED}; found: {_found(given)}")
    if d != given:
        print(f"dfk: using {d} (the data folder inside {given})", file=sys.stderr, flush=True)
    layout, splits = here
    if layout == "kaggle":
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise UserError(
                f"{d} has no {', '.join(s.capitalize() for s in missing)} folder; the Kaggle layout needs "
                f"Train, Validation and Test (found: {_found(d)}); or use a flat Fake/Real folder with --val-split"
            )
    return d, layout, splits


def _candidates(root: Path, layout: str, splits: dict[str, Path]) -> list[tuple[str | None, int, Path]]:
    """Every file under the class folders: (split, or None in a flat folder; label; path)."""
    out: list[tuple[str | None, int, Path]] = []
    if layout == "kaggle":
        for split in SPLITS:
            sd = splits[split]
            for label, cd in _class_dirs(sd, str(sd)).items():
                out += [(split, label, f) for f in _walk_files(cd)]
    else:
        for label, cd in _class_dirs(root, str(root)).items():
            out += [(None, label, f) for f in _walk_files(cd)]
    return out



def _split_of(rel: str, val_split: float, seed: int) -> str:
    h = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < val_split:
        return "validation"
    if u < 2 * val_split:
        return "test"
    return "train"
