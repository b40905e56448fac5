"""Scan a data folder into a :class:`DatasetIndex`: paths, labels, counts, bad files, fingerprint.

Two layouts are understood, folder names matched case-insensitively:

* Kaggle: ``Train|Validation|Test / Fake|Real / *.jpg``
* flat: ``Fake|Real / *.jpg``; validation and test are carved out by a stable hash of each
  file's relative path, so adding files never moves existing ones between splits.

Every image's header is read (not its pixels) so that non-images and decompression bombs are
listed as bad files before training starts; the pipeline skips files that fail later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from dfk.config import BUILTIN_DATA, TrainConfig
from dfk.errors import UserError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation",
    "test": "test", "testing": "test",
}
CLASSES = {"real": 0, "fake": 1}


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says; the format-leakage check compares these between classes."""

    format: str
    width: int
    height: int
    file_bytes: int
    jpeg_quality: int  # estimated from the quantisation tables; 0 when not a JPEG
    mode: str


@dataclass(frozen=True)
class DataSpec:
    """Which images and how a flat folder is split: enough to open the same index again.

    ``data_dir`` is "builtin" or an absolute path; ``fingerprint`` is what the index had when a run
    trained on it ("" when unknown), so a later look can tell whether the folder changed since.
    """

    data_dir: str
    val_split: float = TrainConfig.val_split
    seed: int = TrainConfig.seed
    fingerprint: str = ""

    @classmethod
    def of(cls, data_dir: str | os.PathLike, val_split: float = TrainConfig.val_split,
           seed: int = TrainConfig.seed) -> "DataSpec":
        """``data_dir`` as given by a user: "builtin", or a path made absolute."""
        d = str(data_dir)
        return cls(d if d == BUILTIN_DATA else str(Path(d).expanduser().resolve()), float(val_split), int(seed))

    @classmethod
    def of_config(cls, cfg: TrainConfig) -> "DataSpec":
        """The images a training config names, split its way."""
        return cls.of(cfg.data_dir, cfg.val_split, cfg.seed)

    def same_images(self, other: "DataSpec") -> bool:
        return self.data_dir == other.data_dir

    def same_split(self, other: "DataSpec") -> bool:
        return (self.data_dir, self.val_split, self.seed) == (other.data_dir, other.val_split, other.seed)

    def open(self, progress: Callable[[int], None] | None = None) -> "DatasetIndex":
        return open_data(self.data_dir, self.val_split, self.seed, progress)

    def describe(self, split: str = "test") -> str:
        name = "the built-in set" if self.data_dir == BUILTIN_DATA else self.data_dir
        return f"the {split} split of {name} (val_split {self.val_split:g}, seed {self.seed})"


@dataclass
class DatasetIndex:
    root: str
    layout: str  # "kaggle" or "flat"
    samples: dict[str, list[tuple[str, int]]]  # split -> [(path, label)]
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored_files: int = 0
    info: dict[str, ImageInfo] = field(default_factory=dict)
    fingerprint: str = ""
    spec: DataSpec | None = None  # how it was opened (set by open_data)

    def paths(self, split: str) -> list[str]:
        return [p for p, _ in self.samples[split]]

    def labels(self, split: str) -> list[int]:
        return [y for _, y in self.samples[split]]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split, items in self.samples.items():
            c = Counter(y for _, y in items)
            out[split] = {"real": c.get(0, 0), "fake": c.get(1, 0)}
        return out

    def summary(self) -> dict:
        return {
            "root": self.root,
            "layout": self.layout,
            "fingerprint": self.fingerprint,
            "counts": self.counts(),
            "bad_files": len(self.bad_files),
            "ignored_files": self.ignored_files,
        }


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


def _split_of(rel: str, val_split: float, seed: int) -> str:
    h = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < val_split:
        return "validation"
    if u < 2 * val_split:
        return "test"
    return "train"


# libjpeg's standard luminance table, for estimating the quality a JPEG was saved at.
_STD_LUMA_SUM = sum([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


def jpeg_quality(im) -> int:
    """Estimate the IJG quality (1..100) of a JPEG from its first quantisation table."""
    q = getattr(im, "quantization", None)
    if not q or 0 not in q:
        return 0
    scale = sum(q[0]) / _STD_LUMA_SUM * 100
    quality = 5000 / scale if scale > 100 else (200 - scale) / 2
    return int(round(min(100, max(1, quality))))


def probe(path: str) -> ImageInfo:
    """Read one file's header; raises :class:`~dfk.data.decode.BadImage` for non-images, formats outside
    the allowlist and bombs (a JPEG is judged at the reduced scale training decodes it at)."""
    from dfk.data.decode import BadImage, check_budget, open_header

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise BadImage("empty file")
    with open_header(path) as im:
        try:
            info = ImageInfo(im.format or "?", *im.size, size, jpeg_quality(im), im.mode)
            check_budget(im, 1)
        except BadImage:
            raise
        except Exception as exc:  # a header Pillow opened but cannot describe
            raise BadImage(f"not an image ({type(exc).__name__})") from None
    return info


def open_data(data_dir: str | os.PathLike, val_split: float = TrainConfig.val_split, seed: int = TrainConfig.seed,
              progress: Callable[[int], None] | None = None) -> DatasetIndex:
    """The one way into the data: "builtin" (the synthetic set, generated on first use) or a folder,
    scanned into its index. Training, tuning, evaluation and promotion all open data here."""
    spec = DataSpec.of(data_dir, val_split, seed)
    if spec.data_dir == BUILTIN_DATA:
        from dfk.data.synth import builtin_dataset

        root = builtin_dataset()
    else:
        root = Path(spec.data_dir)
    index = scan(root, val_split, seed, progress)
    index.spec = dataclasses.replace(spec, fingerprint=index.fingerprint)
    return index


def scan(
    data_dir: str | os.PathLike,
    val_split: float = TrainConfig.val_split,
    seed: int = TrainConfig.seed,
    progress: Callable[[int], None] | None = None,
) -> DatasetIndex:
    """Index ``data_dir``; raises :class:`UserError` for layouts no run could use."""
    from dfk.data.decode import IMAGE_EXTENSIONS, BadImage

    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data directory {root} does not exist; pass a folder with Train/Validation/Test or Fake/Real")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass a folder with Train/Validation/Test or Fake/Real")

    top = {c.name.lower(): c for c in _children(root) if c.is_dir()}
    splits_found = {SPLIT_ALIASES[n]: p for n, p in top.items() if n in SPLIT_ALIASES}
    classes_found = {n for n in top if n in CLASSES}

    candidates: list[tuple[str | None, int, Path]] = []  # (split or None, label, file)
    if splits_found:
        layout = "kaggle"
        missing = [s for s in SPLITS if s not in splits_found]
        if missing:
            raise UserError(
                f"{root} has no {', '.join(s.capitalize() for s in missing)} folder; the Kaggle layout needs "
                "Train, Validation and Test (or use a flat Fake/Real folder with --val-split)"
            )
        for split in SPLITS:
            sd = splits_found[split]
            for label, cd in _class_dirs(sd, str(sd)).items():
                candidates += [(split, label, f) for f in _walk_files(cd)]
    elif classes_found:
        layout = "flat"
        for label, cd in _class_dirs(root, str(root)).items():
            candidates += [(None, label, f) for f in _walk_files(cd)]
    else:
        raise UserError(
            f"{root} has neither Train/Validation/Test nor Fake/Real folders; "
            "lay the images out as Train|Validation|Test / Fake|Real"
        )

    images = [(s, y, f) for s, y, f in candidates if f.suffix.lower() in IMAGE_EXTENSIONS]
    index = DatasetIndex(str(root), layout, {s: [] for s in SPLITS}, ignored_files=len(candidates) - len(images))

    def check(item):
        try:
            return item, probe(str(item[2])), None
        except BadImage as exc:
            return item, None, str(exc)

    digest = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, ((split, label, f), info, err) in enumerate(pool.map(check, images), start=1):
            if progress is not None and n % 256 == 0:
                progress(256)
            if err is not None:
                index.bad_files.append((str(f), err))
                continue
            rel = f.relative_to(root).as_posix()
            split = split or _split_of(rel, val_split, seed)
            index.samples[split].append((str(f), label))
            index.info[str(f)] = info
            digest.update(f"{split}\t{label}\t{rel}\t{info.file_bytes}\n".encode())
    if progress is not None:
        progress(len(images) % 256)
    index.fingerprint = digest.hexdigest()[:16]

    for split, counts in index.counts().items():
        for name, n in counts.items():
            if n == 0:
                where = f"{root} ({split} split)" if layout == "flat" else f"{splits_found[split]}"
                raise UserError(
                    f"{where} has no readable {name.capitalize()} images; both Fake and Real are needed in every split"
                    + (f" ({len(index.bad_files)} unreadable files were skipped)" if index.bad_files else "")
                )
    return index
