"""The built-in synthetic forgery set: real photographs and forgeries with ground-truth masks.

Real images are random crops (scale, position, flip, mild colour jitter) of photographs that ship
inside scikit-image and scikit-learn. Each fake starts as such a crop, then one or two of the
traces real forgeries leave are applied inside a face-like ellipse:

* ``splice``: the region comes from another photograph, blended with a feathered seam;
* ``upsample``: generator-style up-sampling: nearest-neighbour blocks, a transposed-convolution
  checkerboard and a periodic (spectral peak) pattern;
* ``colour``: a colour / illumination mismatch of the region;
* ``double_jpeg``: the region was JPEG-compressed before, on a shifted 8x8 grid.

Reals and fakes are saved the same way (JPEG, same quality range, same size), so the container
gives nothing away (``dfk data inspect`` checks). The ellipse of every fake is written as a PNG
mask under ``masks/<Split>/<file stem>.png`` for scoring Grad-CAM.
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

from dfk.errors import UserError

#: Bump when the generator changes, so cached copies are rebuilt.
GENERATOR_VERSION = 1
MANIPULATIONS = ("splice", "upsample", "colour", "double_jpeg")
#: Manipulations that paste a region and so leave a blending seam around it.
SEAMED = frozenset({"splice", "colour", "double_jpeg"})
SPLIT_DIRS = {"train": "Train", "validation": "Validation", "test": "Test"}
#: Both classes are saved with a JPEG quality drawn from this range.
JPEG_QUALITY = (80, 95)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults keep ``mlflow run . -e resnet`` within minutes on 2 CPU cores."""

    train: int = 48  # images per class in Train
    validation: int = 16  # images per class in Validation
    test: int = 24  # images per class in Test
    image_size: int = 256  # the notebook's training size
    seed: int = 0

    def validate(self) -> None:
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 2:
                raise UserError(f"{name}={getattr(self, name)} images per class is too few; use at least 2")
            if getattr(self, name) > 100_000:
                raise UserError(f"{name}={getattr(self, name)} images per class is too many; use at most 100000")
        if not 32 <= self.image_size <= 1024:
            raise UserError(f"image size {self.image_size} is out of range; use 32 to 1024")

    def cache_name(self) -> str:
        return (f"synth-v{GENERATOR_VERSION}-{self.image_size}px-"
                f"{self.train}-{self.validation}-{self.test}-seed{self.seed}")


@lru_cache(maxsize=1)
def source_photos() -> tuple[np.ndarray, ...]:
    """Natural photographs shipped inside scikit-image and scikit-learn (no download)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    colour = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.hubble_deep_field(),
              sd.immunohistochemistry(), sd.stereo_motorcycle()[0], sd.retina()]
    gray = [sd.camera(), sd.moon(), sd.coins(), sd.grass(), sd.gravel(), sd.brick()]
    photos = [np.ascontiguousarray(p[..., :3]) for p in colour]
    photos += [np.repeat(g[..., None], 3, axis=-1) for g in gray]
    photos += list(load_sample_images().images)
    return tuple(p.astype(np.uint8) for p in photos)


# ----------------------------------------------------------------------------- image making
def natural_crop(rng: np.random.Generator, size: int, exclude: int | None = None) -> tuple[np.ndarray, int]:
    """A random crop of a random photograph, resized to ``size``, flipped and jittered."""
    import cv2

    photos = source_photos()
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


def ellipse_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A face-like ellipse (taller than wide, slightly rotated) as a 0/1 float mask."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    ax = int(size * rng.uniform(0.18, 0.28))
    ay = int(ax * rng.uniform(1.1, 1.4))
    cx = int(rng.uniform(0.3, 0.7) * size)
    cy = int(rng.uniform(0.3, 0.7) * size)
    cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    return mask.astype(np.float32)


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _splice(img, rng, source):
    donor, _ = natural_crop(rng, img.shape[0], exclude=source)
    # The donor was shot elsewhere: it is a little softer or sharper than the host.
    import cv2

    if rng.random() < 0.5:
        donor = cv2.GaussianBlur(donor, (0, 0), rng.uniform(0.6, 1.2))
    return donor, rng.uniform(0.8, 2.0)


def _upsample(img, rng, source):
    import cv2

    size = img.shape[0]
    f = int(rng.choice([2, 4]))
    small = cv2.resize(img, (size // f, size // f), interpolation=cv2.INTER_AREA)
    region = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0) * rng.uniform(10, 20)
    fx, fy = rng.uniform(0.2, 0.45, size=2)
    peak = np.sin(2 * np.pi * (fx * xx + fy * yy)) * rng.uniform(6, 12)
    return region + (checker + peak)[..., None], rng.uniform(0.5, 1.0)


def _colour(img, rng, source):
    gains = rng.uniform(0.65, 1.35, size=3)
    gains[int(rng.integers(3))] = rng.choice([0.65, 1.35])  # at least one channel clearly off
    gamma = rng.uniform(0.75, 1.3)
    region = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma * gains
    return region, rng.uniform(1.0, 2.5)


def _double_jpeg(img, rng, source):
    dy, dx = (int(v) for v in rng.integers(1, 8, size=2))
    shifted = np.roll(img, (dy, dx), axis=(0, 1))
    region = np.roll(_jpeg_roundtrip(shifted, int(rng.integers(2, 8))), (-dy, -dx), axis=(0, 1))
    return region, rng.uniform(0.5, 1.0)


_APPLY: dict[str, Callable] = {"splice": _splice, "upsample": _upsample, "colour": _colour, "double_jpeg": _double_jpeg}


def make_fake(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A forged image, its binary mask and the manipulations applied."""
    import cv2

    img, source = natural_crop(rng, size)
    mask = ellipse_mask(rng, size)
    kinds = list(rng.choice(MANIPULATIONS, size=int(rng.integers(1, 3)), replace=False))
    for kind in kinds:
        region, feather = _APPLY[kind](img, rng, source)
        soft = cv2.GaussianBlur(mask, (0, 0), feather)[..., None]
        img = img * (1 - soft) + np.clip(region, 0, 255) * soft
        if kind in SEAMED:
            # The blending boundary of a pasted region: a thin halo brighter or darker than both sides.
            img = img + 4 * soft * (1 - soft) * rng.choice([-1.0, 1.0]) * rng.uniform(25, 45)
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
                    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
                    if label:
                        img, mask, kinds = make_fake(rng, spec.image_size)
                        (tmp / "masks" / split_dir).mkdir(parents=True, exist_ok=True)
                        Image.fromarray((mask > 0.5).astype(np.uint8) * 255).save(tmp / "masks" / split_dir / f"{stem}.png")
                    else:
                        img, _ = natural_crop(rng, spec.image_size)
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
