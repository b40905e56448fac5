"""The built-in synthetic forgery set: real photographs and forgeries with ground-truth masks.

Real images are random crops (scale, position, flip, mild colour jitter) of photographs that ship
inside scikit-image and scikit-learn (or of any folder of photographs: ``photos``). Each fake
starts as such a crop, then one or two of the traces real forgeries leave are applied inside a
region of random position and size (an ellipse; a polygon in the ``shifted`` domain):

* ``splice``: the region comes from another photograph, blended with a feathered seam;
* ``upsample``: generator-style up-sampling: nearest-neighbour blocks, a transposed-convolution
  checkerboard and a periodic (spectral peak) pattern;
* ``colour``: a colour / illumination mismatch of the region;
* ``double_jpeg``: the region was JPEG-compressed before, on a shifted 8x8 grid.

Reals and fakes are saved the same way (JPEG, same quality range, same size), so the container
gives nothing away (``dfk data inspect`` checks). The region of every fake is written as a PNG
mask under ``masks/<Split>/<file stem>.png`` for scoring Grad-CAM.

Images are written at the size models train on (64 px by default): a detector of re-sampling
traces must not see them re-sampled once more by the loader.

For generalization protocols a set can be restricted to some ``manipulations`` (leave one
manipulation out) and built with ``shifted`` forgery parameters that the default set never uses
(other up-sampling factor, weaker traces, other JPEG qualities, polygonal regions) from other
``photos`` (cross-domain).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from dfk.config import BUILTIN_IMAGE_SIZE
from dfk.errors import UserError

#: Bump when the generator changes, so cached copies are rebuilt.
GENERATOR_VERSION = 2
MANIPULATIONS = ("splice", "upsample", "colour", "double_jpeg")
#: Manipulations that paste a region and so leave a blending seam around it.
SEAMED = frozenset({"splice", "colour", "double_jpeg"})
SPLIT_DIRS = {"train": "Train", "validation": "Validation", "test": "Test"}
#: ``photos`` value for the photographs that ship inside scikit-image and scikit-learn.
BUILTIN_PHOTOS = "builtin"
#: Photographs taken from a folder are first shrunk to at most this side (bounded memory).
MAX_PHOTO_SIDE = 1024


@dataclass(frozen=True)
class ForgeryParams:
    """The ranges one domain of forgeries draws from; ``SHIFTED`` shares none of ``DEFAULT``'s."""

    jpeg_quality: tuple[int, int]  # both classes are saved with a quality from this range
    upsample_factors: tuple[int, ...]  # generator-style nearest-neighbour up-sampling factors
    checker: tuple[float, float]  # transposed-convolution checkerboard amplitude (0..255 scale)
    double_jpeg_quality: tuple[int, int]  # quality of the region's first, misaligned compression
    colour_gain: float  # at least one channel's gain is off by this much
    splice_blur: tuple[float, float]  # the donor is softer than the host by this Gaussian sigma
    seam: tuple[float, float]  # blending-halo amplitude around a pasted region
    region_size: tuple[float, float]  # region radius as a fraction of the image side
    polygon: bool  # polygonal regions instead of ellipses


DEFAULT_FORGERIES = ForgeryParams(jpeg_quality=(80, 95), upsample_factors=(2, 4), checker=(10, 20),
                                  double_jpeg_quality=(2, 6), colour_gain=0.4, splice_blur=(0.6, 1.2),
                                  seam=(30, 50), region_size=(0.15, 0.3), polygon=False)
SHIFTED_FORGERIES = ForgeryParams(jpeg_quality=(65, 79), upsample_factors=(3,), checker=(4, 9),
                                  double_jpeg_quality=(10, 20), colour_gain=0.22, splice_blur=(1.3, 2.0),
                                  seam=(10, 24), region_size=(0.15, 0.35), polygon=True)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults are sized so the main job's champion learns it within minutes
    on 2 CPU cores (docs/BENCHMARKS.md measures how well)."""

    train: int = 1000  # images per class in Train
    validation: int = 150  # images per class in Validation
    test: int = 300  # images per class in Test: enough that ROC-AUC varies by about 0.01 between draws
    image_size: int = BUILTIN_IMAGE_SIZE
    seed: int = 0
    manipulations: tuple[str, ...] = MANIPULATIONS  # the kinds fakes draw from
    photos: str = BUILTIN_PHOTOS  # or a folder of photographs (any of dfk's image formats)
    shifted: bool = False  # SHIFTED_FORGERIES instead of DEFAULT_FORGERIES

    @property
    def forgeries(self) -> ForgeryParams:
        return SHIFTED_FORGERIES if self.shifted else DEFAULT_FORGERIES

    def validate(self) -> None:
        bad = [m for m in self.manipulations if m not in MANIPULATIONS]
        if bad or not self.manipulations:
            raise UserError(f"unknown manipulation {', '.join(bad) or '(none given)'}; choose from {', '.join(MANIPULATIONS)}")
        if self.photos != BUILTIN_PHOTOS and not Path(self.photos).expanduser().is_dir():
            raise UserError(f"photos folder {self.photos} does not exist; give a folder of photographs or {BUILTIN_PHOTOS}")
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 2:
                raise UserError(f"{name}={getattr(self, name)} images per class is too few; use at least 2")
            if getattr(self, name) > 100_000:
                raise UserError(f"{name}={getattr(self, name)} images per class is too many; use at most 100000")
        if not 32 <= self.image_size <= 1024:
            raise UserError(f"image size {self.image_size} is out of range; use 32 to 1024")

    def cache_name(self) -> str:
        if self.photos != BUILTIN_PHOTOS or self.shifted or self.manipulations != MANIPULATIONS:
            raise ValueError("only sets of the built-in photographs and forgeries are cached")
        return (f"synth-v{GENERATOR_VERSION}-{self.image_size}px-"
                f"{self.train}-{self.validation}-{self.test}-seed{self.seed}")


@lru_cache(maxsize=2)
def source_photos(photos: str = BUILTIN_PHOTOS) -> tuple[np.ndarray, ...]:
    """The photographs real images are cropped from: the ones shipped inside scikit-image and
    scikit-learn (no download), or every readable image in the folder ``photos``."""
    if photos != BUILTIN_PHOTOS:
        return _folder_photos(Path(photos).expanduser())
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    colour = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.hubble_deep_field(),
              sd.immunohistochemistry(), sd.stereo_motorcycle()[0], sd.retina()]
    gray = [sd.camera(), sd.moon(), sd.coins(), sd.grass(), sd.gravel(), sd.brick()]
    photos = [np.ascontiguousarray(p[..., :3]) for p in colour]
    photos += [np.repeat(g[..., None], 3, axis=-1) for g in gray]
    photos += list(load_sample_images().images)
    return tuple(p.astype(np.uint8) for p in photos)


def _folder_photos(folder: Path) -> tuple[np.ndarray, ...]:
    from dfk.data.decode import IMAGE_EXTENSIONS, BadImage, decode_for_display, read_bytes

    out = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        try:
            # Reduced as it is decoded (a JPEG at a smaller DCT scale), so big photos fit the decode budget.
            img = decode_for_display(read_bytes(path), MAX_PHOTO_SIDE)
        except BadImage:
            continue
        out.append(img)
    if len(out) < 2:
        raise UserError(f"{folder} has {len(out)} readable photographs; a set needs at least 2 (splices take a second one)")
    return tuple(out)


# ----------------------------------------------------------------------------- image making
def natural_crop(rng: np.random.Generator, size: int, exclude: int | None = None,
                 photos: str = BUILTIN_PHOTOS) -> tuple[np.ndarray, int]:
    """A random crop of a random photograph, resized to ``size``, flipped and jittered."""
    import cv2

    photos = source_photos(photos)
    choices = [i for i in range(len(photos)) if i != exclude]
    k = int(rng.choice(choices))
    src = photos[k]
    h, w = src.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    img = cv2.resize(src[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    # Mild colour jitter: brightness, contrast, saturation.
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)
    gray = img.mean(axis=-1, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.85, 1.15)
    return np.clip(img, 0, 255), k


def region_mask(rng: np.random.Generator, size: int, params: ForgeryParams = DEFAULT_FORGERIES) -> np.ndarray:
    """The forged region as a 0/1 float mask: anywhere in the image, of random size (so a heatmap
    cannot point at it by looking at the centre); an ellipse, or a random polygon."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    r = size * rng.uniform(*params.region_size)
    ry = min(r * rng.uniform(1.0, 1.4), size * 0.45)
    cx, cy = float(rng.uniform(r, size - r)), float(rng.uniform(ry, size - ry))  # wholly inside the image
    if params.polygon:
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(4, 8))))
        radii = rng.uniform(0.6, 1.0, size=len(angles))
        pts = np.stack([cx + r * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:
        cv2.ellipse(mask, (round(cx), round(cy)), (max(2, round(r)), max(2, round(ry))),
                    float(rng.uniform(-30, 30)), 0, 360, 1, -1)
    return mask.astype(np.float32)


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _splice(img, rng, source, spec: "SynthSpec"):
    donor, _ = natural_crop(rng, img.shape[0], exclude=source, photos=spec.photos)
    # The donor was shot elsewhere: it is a little softer or sharper than the host.
    import cv2

    if rng.random() < 0.5:
        donor = cv2.GaussianBlur(donor, (0, 0), rng.uniform(*spec.forgeries.splice_blur))
    return donor, rng.uniform(0.8, 2.0)


def _upsample(img, rng, source, spec: "SynthSpec"):
    import cv2

    size = img.shape[0]
    f = int(rng.choice(spec.forgeries.upsample_factors))
    small = cv2.resize(img, (-(-size // f), -(-size // f)), interpolation=cv2.INTER_AREA)
    region = np.repeat(np.repeat(small, f, axis=0), f, axis=1)[:size, :size]  # nearest-neighbour blocks
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0) * rng.uniform(*spec.forgeries.checker)
    fx, fy = rng.uniform(0.2, 0.45, size=2)
    peak = np.sin(2 * np.pi * (fx * xx + fy * yy)) * rng.uniform(0.5, 1.0) * spec.forgeries.checker[1] * 0.6
    return region + (checker + peak)[..., None], rng.uniform(0.5, 1.0)


def _colour(img, rng, source, spec: "SynthSpec"):
    off = spec.forgeries.colour_gain
    gains = rng.uniform(1 - off, 1 + off, size=3)
    gains[int(rng.integers(3))] = rng.choice([1 - off, 1 + off])  # at least one channel clearly off
    gamma = rng.uniform(0.75, 1.3)
    region = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma * gains
    return region, rng.uniform(1.0, 2.5)


def _double_jpeg(img, rng, source, spec: "SynthSpec"):
    dy, dx = (int(v) for v in rng.integers(1, 8, size=2))
    shifted = np.roll(img, (dy, dx), axis=(0, 1))
    lo, hi = spec.forgeries.double_jpeg_quality
    region = np.roll(_jpeg_roundtrip(shifted, int(rng.integers(lo, hi + 1))), (-dy, -dx), axis=(0, 1))
    return region, rng.uniform(0.5, 1.0)


_APPLY: dict[str, Callable] = {"splice": _splice, "upsample": _upsample, "colour": _colour, "double_jpeg": _double_jpeg}


def make_fake(rng: np.random.Generator, spec: "SynthSpec") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A forged image, its binary mask and the manipulations applied."""
    import cv2

    size = spec.image_size
    img, source = natural_crop(rng, size, photos=spec.photos)
    mask = region_mask(rng, size, spec.forgeries)
    n = min(len(spec.manipulations), int(rng.integers(1, 3)))
    kinds = list(rng.choice(spec.manipulations, size=n, replace=False))
    for kind in kinds:
        region, feather = _APPLY[kind](img, rng, source, spec)
        soft = cv2.GaussianBlur(mask, (0, 0), feather)[..., None]
        img = img * (1 - soft) + np.clip(region, 0, 255) * soft
        if kind in SEAMED:
            # The blending boundary of a pasted region: a thin halo brighter or darker than both sides.
            img = img + 4 * soft * (1 - soft) * rng.choice([-1.0, 1.0]) * rng.uniform(*spec.forgeries.seam)
    return np.clip(img, 0, 255), mask, [str(k) for k in kinds]


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(img).astype(np.uint8)).save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing
def generate(spec: SynthSpec, out: str | os.PathLike, progress: Callable[[int], None] | None = None) -> Path:
    """Write the dataset into ``out`` (which must not exist or be empty); returns its path.

    Written into a temporary sibling folder and renamed at the end, so an interrupted run never
    leaves a half-written dataset behind.
    """
    from PIL import Image

    spec.validate()
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = []
        for split_no, (split, split_dir) in enumerate(SPLIT_DIRS.items()):
            n = getattr(spec, split)
            for label, cls in ((0, "Real"), (1, "Fake")):
                (tmp / split_dir / cls).mkdir(parents=True)
                for i in range(n):
                    rng = np.random.default_rng([spec.seed, GENERATOR_VERSION, split_no, label, i])
                    stem = f"{cls.lower()}_{i:05d}"
                    lo, hi = spec.forgeries.jpeg_quality
                    quality = int(rng.integers(lo, hi + 1))
                    if label:
                        img, mask, kinds = make_fake(rng, spec)
                        (tmp / "masks" / split_dir).mkdir(parents=True, exist_ok=True)
                        Image.fromarray((mask > 0.5).astype(np.uint8) * 255).save(tmp / "masks" / split_dir / f"{stem}.png")
                    else:
                        img, _ = natural_crop(rng, spec.image_size, photos=spec.photos)
                        kinds = []
                    (tmp / split_dir / cls / f"{stem}.jpg").write_bytes(encode_jpeg(img, quality))
                    manifest.append({"file": f"{split_dir}/{cls}/{stem}.jpg", "label": label, "manipulations": kinds})
                    if progress is not None:
                        progress(1)
        (tmp / "manifest.json").write_text(json.dumps({"spec": asdict(spec), "generator_version": GENERATOR_VERSION,
                                                       "images": manifest}, indent=1))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cache_dir() -> Path:
    """Where the built-in set lives: ``$DFK_CACHE``, else ``$XDG_CACHE_HOME/dfk``, else ``~/.cache/dfk``."""
    if os.environ.get("DFK_CACHE"):
        return Path(os.environ["DFK_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfk"


def builtin_dataset(spec: SynthSpec | None = None) -> Path:
    """The built-in set for ``spec``, generated on first use and reused afterwards."""
    spec = spec or SynthSpec()
    path = cache_dir() / spec.cache_name()
    if not (path / "manifest.json").exists():
        import logging

        logging.getLogger(__name__).info("generating the built-in synthetic forgery set in %s", path)
        try:
            generate(spec, path)
        except UserError:
            # Another process finished the same set first.
            if not (path / "manifest.json").exists():
                raise
    return path


def mask_path(image_path: str | os.PathLike) -> Path | None:
    """The ground-truth mask of a built-in fake (``<root>/masks/<Split>/<stem>.png``), if there is one."""
    p = Path(image_path)
    candidate = p.parents[2] / "masks" / p.parents[1].name / f"{p.stem}.png"
    return candidate if candidate.exists() else None
