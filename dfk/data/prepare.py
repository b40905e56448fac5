"""Face crops for training, from a folder of real and fake videos and photos, split by source video.

Reads FaceForensics++'s layout (``original_sequences/…`` real, ``manipulated_sequences/<method>/…``
fake), Celeb-DF's (``Celeb-real``, ``YouTube-real`` real, ``Celeb-synthesis`` fake) or any folder with
``Fake`` and ``Real`` somewhere in each file's path; writes the Kaggle layout
``Train|Validation|Test / Fake|Real / *.png`` of face crops cut by :mod:`dfk.data.faces` (the rule
recorded in ``faces.json`` at the top, where training reads it back), with a report: videos and
photos read, frames sampled, faces found, files that failed.

Every crop of a source goes to one split: never frames of one video in two splits (a model would
be tested on the faces it trained on). The source is the video itself, widened where the layout
names who is in it: FaceForensics++'s ``000_003.mp4`` and ``000.mp4`` are both source ``000`` (the
fake is made from that original), Celeb-DF's ``id0_id1_0002.mp4`` and ``id0_0003.mp4`` both ``id0``;
elsewhere the file's stem, so ``Fake/clip.mp4`` and ``Real/clip.mp4`` stay together too.

From each sampled frame (and each photo) the largest face is kept, as DeepfakeBench's preprocessing
keeps one face per frame: in a forged video the swapped face is the subject, and a bystander's face
labelled fake would teach the model noise. Crops are PNG (lossless: the crop is what the frame held).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from dfk.data.faces import MANIFEST, CropRule
from dfk.errors import UserError

#: Path parts (lower case) that say a file is fake or real, by layout.
FAKE_PARTS = {"manipulated_sequences": "faceforensics", "celeb-synthesis": "celeb-df", "fake": "fake-real"}
REAL_PARTS = {"original_sequences": "faceforensics", "celeb-real": "celeb-df", "youtube-real": "celeb-df",
              "real": "fake-real"}
_FFPP = re.compile(r"^(\d{3})(?:_\d{3})?$")
_CELEB = re.compile(r"^(id\d+)_")
#: Split folder names of the Kaggle layout written.
SPLIT_DIRS = {"train": "Train", "validation": "Validation", "test": "Test"}


@dataclass(frozen=True)
class PrepareSpec:
    """What :func:`prepare_faces` reads, how, and where it writes."""

    src: str
    out: str
    frames: str = "16"  # per video: a count spread over it, or a rate (2fps); dfk.data.video.Sampling
    rule: CropRule = CropRule()
    val_split: float = 0.2  # of the sources, for validation, and again for test
    seed: int = 42  # of the split

    def params(self) -> dict[str, str]:
        return {"src": str(Path(self.src).resolve()), "out": str(Path(self.out).resolve()), "frames": self.frames,
                "margin": str(self.rule.margin), "square": str(self.rule.square), "size": str(self.rule.size),
                "val_split": str(self.val_split), "seed": str(self.seed)}

    def validate(self) -> None:
        from dfk.data.video import Sampling

        Sampling.parse(self.frames)
        self.rule.validate()
        if not 0 < self.val_split < 0.5:
            raise UserError(f"val_split must be between 0 and 0.5, got {self.val_split}")
        if not Path(self.src).is_dir():
            raise UserError(f"{self.src} is not a folder")
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
            raise UserError(f"{out} exists and is not a folder dfk data prepare wrote; name a new folder")


@dataclass
class Source:
    path: Path
    label: int  # 1 fake, 0 real
    key: str  # files with one key go to one split
    kind: str  # video or image


@dataclass
class PrepareReport:
    src: str
    out: str
    layout: str
    rule: dict
    frames: str
    videos_read: int = 0
    photos_read: int = 0
    frames_sampled: int = 0
    frames_with_face: int = 0
    faces_written: int = 0
    sources: int = 0
    unlabelled: int = 0  # media files with neither fake nor real in their path
    failed: list[tuple[str, str]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # split -> {real, fake} crops
    split_of: dict = field(default_factory=dict)  # source key -> split
    files: list[dict] = field(default_factory=list)  # per source file: path, label, split, crops

    def summary(self) -> dict:
        d = asdict(self)
        d["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return d


# ----------------------------------------------------------------------------- reading the source
def source_key(rel: Path) -> str:
    stem = rel.stem.lower()
    if m := _FFPP.match(stem):
        return f"ffpp:{m.group(1)}"
    if m := _CELEB.match(stem):
        return f"celeb:{m.group(1)}"
    return f"stem:{stem}"


def discover(src: str | os.PathLike) -> tuple[list[Source], str, int]:
    """The labelled videos and photos under ``src``, the layout they were found in, and how many media
    files had no class in their path."""
    from dfk.data.decode import IMAGE_EXTENSIONS
    from dfk.data.video import VIDEO_EXTENSIONS

    root = Path(src)
    found, layouts, unlabelled = [], set(), 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        ext = p.suffix.lower()
        if ext not in VIDEO_EXTENSIONS and ext not in IMAGE_EXTENSIONS:
            continue
        parts = [s.lower() for s in rel.parts[:-1]]
        fake = next((FAKE_PARTS[s] for s in parts if s in FAKE_PARTS), None)
        real = next((REAL_PARTS[s] for s in parts if s in REAL_PARTS), None)
        if (fake is None) == (real is None):  # neither, or both (Real/…/Fake/…): no class to give it
            unlabelled += 1
            continue
        layouts.add(fake or real)
        found.append(Source(p, 1 if fake else 0, source_key(rel), "video" if ext in VIDEO_EXTENSIONS else "image"))
    if not found:
        raise UserError(f"no labelled videos or photos in {src}: lay them out as Fake|Real folders, FaceForensics++'s "
                        "original_sequences|manipulated_sequences or Celeb-DF's Celeb-real|Celeb-synthesis|YouTube-real")
    return found, "+".join(sorted(layouts)), unlabelled


def assign_splits(sources: list[Source], val_split: float, seed: int) -> dict[str, str]:
    """Source key -> split. Keys are ordered by a hash of the key (so the order is random but fixed), apart
    by the classes they hold (fake only, real only, both: FaceForensics++'s pairs), and each group is cut
    ``val_split`` for validation, as much for test, the rest for train: every split gets its share of
    each class, at least one source each where a group has three, and a key never lands in two splits."""
    classes: dict[str, set[int]] = {}
    for s in sources:
        classes.setdefault(s.key, set()).add(s.label)
    rank = lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest()  # noqa: E731
    out: dict[str, str] = {}
    for group in ({0}, {1}, {0, 1}):
        keys = sorted((k for k, c in classes.items() if c == group), key=rank)
        n = len(keys)
        held = max(1, round(n * val_split)) if n >= 3 else 0
        for i, k in enumerate(keys):
            out[k] = "validation" if i < held else "test" if i < 2 * held else "train"
    return out


def fingerprint(src: str | os.PathLike) -> str:
    """A digest of the media files under ``src`` (relative path, size, modification time): the data a
    preparation step reads, for reusing a finished one."""
    root = Path(src)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- writing crops
def _largest(boxes):
    return max(boxes, key=lambda b: b.w * b.h) if boxes else None


def _pictures(s: Source, sampling, report: PrepareReport):
    """(frame number or None, RGB picture as the front-end reads it) of a source; failures recorded."""
    from dfk.data.decode import BadImage, read_bytes
    from dfk.data.faces import load_for_faces, shrink
    from dfk.data.video import BadVideo, sample_frames

    if s.kind == "image":
        try:
            picture = load_for_faces(read_bytes(s.path))
        except BadImage as exc:
            report.failed.append((str(s.path), str(exc)))
            return
        report.photos_read += 1
        yield None, picture
        return
    try:
        info, frames = sample_frames(s.path, sampling)
        for frame in frames:
            report.frames_sampled += 1
            yield frame.index, shrink(frame.image)
        report.videos_read += 1
    except BadVideo as exc:
        report.failed.append((str(s.path), str(exc)))


def prepare_faces(spec: PrepareSpec, progress: Callable[[int], None] | None = None) -> PrepareReport:
    """Write the face crops of ``spec.src`` into ``spec.out`` (built in ``OUT.part``, moved into place when
    complete, so a failed run leaves nothing half-written) with ``faces.json``; the report."""
    from PIL import Image

    from dfk.data.faces import crop, detect_faces
    from dfk.data.video import Sampling

    spec.validate()
    sources, layout, unlabelled = discover(spec.src)
    sampling = Sampling.parse(spec.frames)
    out = Path(spec.out).resolve()
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    report = PrepareReport(str(Path(spec.src).resolve()), str(out), layout, spec.rule.to_dict(), str(sampling),
                           unlabelled=unlabelled, sources=len({s.key for s in sources}))
    report.counts = {split: {"real": 0, "fake": 0} for split in SPLIT_DIRS}
    report.split_of = assign_splits(sources, spec.val_split, spec.seed)
    try:
        for split in SPLIT_DIRS.values():  # the whole layout, even where a split gets no crop of a class
            for cls in ("Fake", "Real"):
                (part / split / cls).mkdir(parents=True, exist_ok=True)
        for s in sources:
            split = report.split_of[s.key]
            cls = "Fake" if s.label else "Real"
            folder = part / SPLIT_DIRS[split] / cls
            tag = hashlib.sha256(str(s.path.relative_to(spec.src)).encode()).hexdigest()[:8]
            written = 0
            for index, picture in _pictures(s, sampling, report):
                box = _largest(detect_faces(picture))
                if box is None:
                    continue
                report.frames_with_face += s.kind == "video"
                name = f"{s.path.stem}_{tag}" + (f"_f{index:06d}" if index is not None else "") + ".png"
                Image.fromarray(crop(picture, box, spec.rule)).save(folder / name)
                written += 1
            report.faces_written += written
            report.counts[split][cls.lower()] += written
            report.files.append({"path": str(s.path), "label": s.label, "split": split, "crops": written})
            if s.kind == "image" and not written and not any(p == str(s.path) for p, _ in report.failed):
                report.failed.append((str(s.path), "no face found"))
            if s.kind == "video" and not written and not any(p == str(s.path) for p, _ in report.failed):
                report.failed.append((str(s.path), "no face found in any sampled frame"))
            if progress:
                progress(1)
        if not report.faces_written:
            raise UserError(f"no face found in any of the {len(sources)} files of {spec.src}; nothing written")
        (part / MANIFEST).write_text(json.dumps({"crop_rule": spec.rule.to_dict(), "spec": spec.params(),
                                                 "report": report.summary()}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        part.rename(out)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return report


def written_by(spec: PrepareSpec) -> bool:
    """Whether ``spec.out`` holds what :func:`prepare_faces` wrote from this very spec."""
    try:
        manifest = json.loads((Path(spec.out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("spec") == spec.params()


def per_split_sources(report: PrepareReport) -> dict[str, set[str]]:
    """Source keys per split (a check: no key in two splits)."""
    out: dict[str, set[str]] = {s: set() for s in SPLIT_DIRS}
    for key, split in report.split_of.items():
        out[split].add(key)
    return out
