"""Scan a data folder into a :class:`DatasetIndex`: paths, labels, counts, bad files, fingerprint.

Two layouts are understood, folder names matched case-insensitively:

* Kaggle: ``Train|Validation|Test / Fake|Real / *.jpg``
* flat: ``Fake|Real / *.jpg``; validation and test are carved out by a stable hash of each
  file's relative path, so adding files never moves existing ones between splits.

A folder whose only meaningful child holds the layout (the Kaggle archive unpacks to
``Dataset/Train|Validation|Test``) is opened there, and the folder used is said on stderr.

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
from typing import Callable

from dfk.config import BUILTIN_DATA, TrainConfig
from dfk.data.layout import CLASSES, SPLITS, _candidates, _split_of, locate
from dfk.errors import UserError



@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says; the format-leakage check compares these between classes."""

    format: str
    width: int
    height: int
    file_bytes: int
    jpeg_quality: int  # estimated from the quantisation tables; 0 when not a JPEG
    mode: str
    orientation: int = 1  # EXIF orientation 1..8; 0 when only decoding could tell (a PNG's EXIF may follow its pixels)


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
    headers_cached: int = 0  # header checks reused from an earlier scan (HeaderCache), not read again

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
    from dfk.data.decode import BadImage, check_budget, header_orientation, open_header

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise BadImage("empty file")
    with open_header(path) as im:
        try:
            info = ImageInfo(im.format or "?", *im.size, size, jpeg_quality(im), im.mode, header_orientation(im))
            check_budget(im, 1)
        except BadImage:
            raise
        except Exception as exc:  # a header Pillow opened but cannot describe
            raise BadImage(f"not an image ({type(exc).__name__})") from None
    return info


#: Bump when what a header check records or refuses changes: older cached checks are then not used.
HEADER_CACHE_VERSION = 1
#: A file modified less than this long before it was read is read again next time, not cached: file
#: times can be as coarse as a kernel tick, so a file rewritten within the tick it was read in would
#: look unchanged (git's "racily clean" entries).
_RACY_NS = 2_000_000_000


class HeaderCache:
    """Header checks of one folder kept between commands, in ``<dfk cache>/index/<folder hash>.json``.

    A file whose size, modification time and inode are what they were when its header was read is
    not read again; any other file is (new, replaced, rewritten, touched), and a removed one drops
    out. A command on an unchanged folder of 100,000s of images then lists and stats it, no more.
    """

    def __init__(self, root: Path) -> None:
        import json

        from dfk.data.decode import MAX_DECODED_BYTES, MAX_PIXELS
        from dfk.data.synth import cache_dir

        self.root = str(root.resolve())
        # Anything that changes what a check records or refuses makes older entries unusable.
        self.key = [HEADER_CACHE_VERSION, MAX_PIXELS, MAX_DECODED_BYTES, [f.name for f in dataclasses.fields(ImageInfo)]]
        self.path = cache_dir() / "index" / f"{hashlib.sha256(self.root.encode()).hexdigest()[:24]}.json"
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.hits = 0
        try:
            data = json.loads(self.path.read_text())
            if data["key"] == self.key and data["root"] == self.root:
                self.old = data["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or one from another version: every header is read

    def cached(self, path: str, rel: str) -> tuple[list, bool]:
        """``[size, mtime_ns, inode, ImageInfo fields or None, error or None]`` for ``path`` and True
        when the cache has it as it is now; else its stamp (or why it cannot be read: an entry) and False."""
        try:
            st = os.stat(path)
        except OSError as exc:
            return [0, 0, 0, None, f"cannot read file ({exc.strerror})"], True  # (not kept: racy-marked)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self.old.get(rel)
        return (entry, True) if entry is not None and entry[:3] == stamp else (stamp, False)

    @staticmethod
    def read(path: str, stamp: list) -> list:
        """The entry of a file the cache did not have: its header read now (thread-safe)."""
        import time

        from dfk.data.decode import BadImage

        try:
            entry = [*stamp, list(dataclasses.astuple(probe(path))), None]
        except BadImage as exc:
            entry = [*stamp, None, str(exc)]
        # The stat was before the read: a file changed in between has a newer stamp next time, so is
        # read again. A file modified just now may change again within the same tick: not kept.
        return entry if time.time_ns() - stamp[1] > _RACY_NS else [0, 0, 0, *entry[3:]]

    def keep(self, rel: str, entry: list, hit: bool) -> None:
        self.hits += hit and entry[1] != 0
        if entry[0] or entry[1]:  # not racy, not unreadable
            self.new[rel] = entry

    def save(self) -> None:
        """Write the checks of this scan (atomically; a cache that cannot be written is only slower)."""
        import json
        import tempfile

        if self.new == self.old:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"key": self.key, "root": self.root, "files": self.new}, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            pass


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
    from dfk.data.decode import IMAGE_EXTENSIONS

    root, layout, splits_found = locate(data_dir)
    candidates = _candidates(root, layout, splits_found)

    images = [(s, y, f) for s, y, f in candidates if f.suffix.lower() in IMAGE_EXTENSIONS]
    index = DatasetIndex(str(root), layout, {s: [] for s in SPLITS}, ignored_files=len(candidates) - len(images))

    # Files the header cache has as they are now are not read again; the others are, in threads.
    headers = HeaderCache(root)
    prefix = str(root) + os.sep
    rels = [str(f)[len(prefix):].replace(os.sep, "/") if str(f).startswith(prefix) else f.relative_to(root).as_posix()
            for _, _, f in images]
    looked = [headers.cached(str(f), rel) for (_, _, f), rel in zip(images, rels)]
    to_read = [k for k, (_, hit) in enumerate(looked) if not hit]
    if progress is not None and len(images) - len(to_read):
        progress(len(images) - len(to_read))
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, (k, entry) in enumerate(zip(to_read, pool.map(lambda k: headers.read(str(images[k][2]), looked[k][0]),
                                                              to_read)), start=1):
            looked[k] = (entry, False)
            if progress is not None and n % 256 == 0:
                progress(256)
    if progress is not None and len(to_read) % 256:
        progress(len(to_read) % 256)

    digest = hashlib.sha256()
    for (split, label, f), rel, (entry, hit) in zip(images, rels, looked):
        headers.keep(rel, entry, hit)
        if entry[4] is not None:
            index.bad_files.append((str(f), entry[4]))
            continue
        info = ImageInfo(*entry[3])
        split = split or _split_of(rel, val_split, seed)
        index.samples[split].append((str(f), label))
        index.info[str(f)] = info
        digest.update(f"{split}\t{label}\t{rel}\t{info.file_bytes}\n".encode())
    index.fingerprint = digest.hexdigest()[:16]
    index.headers_cached = headers.hits
    headers.save()

    for split, counts in index.counts().items():
        for name, n in counts.items():
            if n == 0:
                where = f"{root} ({split} split)" if layout == "flat" else f"{splits_found[split]}"
                raise UserError(
                    f"{where} has no readable {name.capitalize()} images; both Fake and Real are needed in every split"
                    + (f" ({len(index.bad_files)} unreadable files were skipped)" if index.bad_files else "")
                )
    return index


@dataclass
class FolderCheck:
    """What :func:`check_folder` learned: enough to tell whether a folder will train."""

    root: str  # the folder holding the layout (inside the one given, for a Kaggle download)
    layout: str
    counts: dict[str, dict[str, int]]  # split -> class -> image files (by extension)
    ignored_files: int  # files in the class folders that are not images by their extension
    headers_read: int
    bad_files: list[tuple[str, str]]  # among the headers read
    bad_estimate: int  # bad files expected over the whole folder, from the sample
    sampled: bool
    problems: list[str]  # what would stop `dfk train`; empty when it will train

    @property
    def smallest(self) -> tuple[str, str, int]:
        """(split, class, images) of the smallest class."""
        return min(((s, c, n) for s, cs in self.counts.items() for c, n in cs.items()), key=lambda t: t[2])

    def summary(self) -> dict:
        split, name, n = self.smallest
        return {**dataclasses.asdict(self), "bad_files": [{"path": p, "reason": r} for p, r in self.bad_files],
                "smallest_class": {"split": split, "class": name, "images": n}, "will_train": not self.problems}


def check_folder(data_dir: str | os.PathLike, val_split: float = TrainConfig.val_split, seed: int = TrainConfig.seed,
                 sample: int = 200) -> FolderCheck:
    """Whether ``data_dir`` will train, in seconds: the layout, files counted by listing only, and
    at most ``sample`` headers read per split and class (every header when ``sample`` is 0).

    :func:`scan` reads every header before training; this reads a sample, so a bad-file count over
    the sample is an estimate. Raises :class:`UserError` for a folder with no usable layout.
    """
    import random

    from dfk.data.decode import IMAGE_EXTENSIONS, BadImage

    root, layout, splits = locate(data_dir)
    candidates = _candidates(root, layout, splits)
    groups: dict[tuple[str, int], list[Path]] = {(s, y): [] for s in SPLITS for y in CLASSES.values()}
    for split, label, f in candidates:
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            groups[(split or _split_of(f.relative_to(root).as_posix(), val_split, seed), label)].append(f)
    images = sum(len(v) for v in groups.values())
    rng = random.Random(seed)
    picked = {k: v if not sample or len(v) <= sample else rng.sample(v, sample) for k, v in groups.items()}

    def bad(f: Path) -> str | None:
        try:
            probe(str(f))
            return None
        except BadImage as exc:
            return str(exc)

    names = {y: c for c, y in CLASSES.items()}
    bad_files: list[tuple[str, str]] = []
    problems: list[str] = []
    estimate = 0.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for (split, label), files in picked.items():
            where = f"{split}/{names[label].capitalize()}"
            reasons = list(pool.map(bad, files))
            failed = [(str(f), r) for f, r in zip(files, reasons) if r is not None]
            bad_files += failed
            if files:
                estimate += len(failed) / len(files) * len(groups[(split, label)])
            if not groups[(split, label)]:
                problems.append(f"no {names[label].capitalize()} images in the {split} split")
            elif len(failed) == len(files):
                problems.append(f"no readable image among the {len(files)} read in {where}")
    return FolderCheck(
        root=str(root), layout=layout,
        counts={s: {names[y]: len(groups[(s, y)]) for y in sorted(names)} for s in SPLITS},
        ignored_files=len(candidates) - images, headers_read=sum(len(v) for v in picked.values()),
        bad_files=bad_files, bad_estimate=round(estimate), sampled=any(len(picked[k]) < len(groups[k]) for k in groups),
        problems=problems,
    )
