"""The built-in synthetic forgery set: real photographs and forgeries with ground-truth masks.

Real images are random crops (scale, position, flip, mild colour jitter) of photographs that ship
inside scikit-image and scikit-learn (``photos="builtin"``), of a larger corpus for pre-training
(``"pretrain"``), or of any folder of photographs. Each fake starts as such a crop, then one or two
manipulations (:mod:`dfk.data.forgeries`) are applied inside a region of random position, size
and shape (:mod:`dfk.data.regions`). The default set uses the classic four:

* ``splice``: the region comes from another photograph, blended with a feathered seam;
* ``upsample``: generator-style up-sampling: nearest-neighbour blocks, a transposed-convolution
  checkerboard and a periodic (spectral peak) pattern;
* ``colour``: a colour / illumination mismatch of the region;
* ``double_jpeg``: the region was JPEG-compressed before, on a shifted 8x8 grid.

The other families teach traces that generalize across generators: ``self_blend`` and
``boundary_blend`` (Self-Blended Images, Face X-ray: the blending boundary and a statistics
mismatch of real images blended with themselves or a colour-matched other photograph), and
``copy_move``, ``inpaint``, ``resample``, ``retouch``, ``noise``. Pre-training draws only from
``PRETRAIN_MANIPULATIONS`` on ``PRETRAIN_PHOTOS`` with ``broad`` forgeries, so the held-out
manipulations and photographs (``HELD_OUT_MANIPULATIONS``, ``HELD_OUT_PHOTOS``) can score the
shipped weights on what they never saw. Given only real photographs (``photos=DIR``,
``manipulations=SELF_BLENDS``), a complete set is made with no fake examples at all.

Reals and fakes are saved the same way (JPEG, same quality range, same size, and with ``broad``
the same distribution of resampling and re-compression chains), so the container gives nothing
away (``dfk data inspect`` checks). The region of every fake is written as a PNG mask under
``masks/<Split>/<file stem>.png`` for scoring Grad-CAM.

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
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from dfk.config import BUILTIN_IMAGE_SIZE
from dfk.data.forgeries import (ALL_MANIPULATIONS, HELD_OUT_MANIPULATIONS, MANIPULATIONS,  # noqa: F401 (re-exported)
                                PRETRAIN_MANIPULATIONS, SEAMED, SELF_BLENDS, forge_region, jpeg_roundtrip)
from dfk.data.regions import (BROAD_FORGERIES, DEFAULT_FORGERIES, SHIFTED_FORGERIES,  # noqa: F401 (re-exported)
                              ForgeryParams, region_mask)
from dfk.errors import UserError

#: Bump when the generator changes, so cached copies are rebuilt. The default and shifted sets are
#: still written byte for byte as version 2 wrote them (a test pins that), so it stays 2.
GENERATOR_VERSION = 2
SPLIT_DIRS = {"train": "Train", "validation": "Validation", "test": "Test"}
#: ``photos`` value for the photographs that ship inside scikit-image and scikit-learn.
BUILTIN_PHOTOS = "builtin"
#: ``photos`` value for the pre-training corpus: the built-in photographs, the other photographs
#: found inside installed Python packages, and Debian's gnome-backgrounds and mate-backgrounds
#: (abstract, desktop). Nothing is downloaded.
PRETRAIN_PHOTOS = "pretrain"
#: Kept out of the pre-training corpus: the independent photographs cross-domain and few-shot
#: protocols score shipped weights on.
HELD_OUT_PHOTOS = "/usr/share/backgrounds/mate/nature"
PRETRAIN_FOLDERS = ("/usr/share/backgrounds/gnome", "/usr/share/backgrounds/mate/abstract",
                    "/usr/share/backgrounds/mate/desktop")
#: Photographs taken from a folder are first shrunk to at most this side (bounded memory).
MAX_PHOTO_SIDE = 1024
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults are sized so the main job's champion learns it within minutes
    on 2 CPU cores (docs/BENCHMARKS.md measures how well)."""

    train: int = 1000  # images per class in Train
    validation: int = 150  # images per class in Validation
    test: int = 300  # images per class in Test: enough that ROC-AUC varies by about 0.01 between draws
    image_size: int = BUILTIN_IMAGE_SIZE
    seed: int = 0
    manipulations: tuple[str, ...] = MANIPULATIONS  # the kinds fakes draw from (any of ALL_MANIPULATIONS)
    photos: str = BUILTIN_PHOTOS  # "builtin", "pretrain" or a folder of photographs (any of dfk's image formats)
    shifted: bool = False  # SHIFTED_FORGERIES instead of DEFAULT_FORGERIES
    broad: bool = False  # BROAD_FORGERIES: every region shape, strong to subtle, resampling and re-compression chains

    @property
    def forgeries(self) -> ForgeryParams:
        return SHIFTED_FORGERIES if self.shifted else BROAD_FORGERIES if self.broad else DEFAULT_FORGERIES

    def validate(self) -> None:
        bad = [m for m in self.manipulations if m not in ALL_MANIPULATIONS]
        if bad or not self.manipulations:
            raise UserError(f"unknown manipulation {', '.join(bad) or '(none given)'}; choose from {', '.join(ALL_MANIPULATIONS)}")
        if self.photos not in (BUILTIN_PHOTOS, PRETRAIN_PHOTOS) and not Path(self.photos).expanduser().is_dir():
            raise UserError(f"photos folder {self.photos} does not exist; give a folder of photographs, "
                            f"{BUILTIN_PHOTOS} or {PRETRAIN_PHOTOS}")
        if self.shifted and self.broad:
            raise UserError("shifted and broad forgeries exclude each other; choose one")
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 2:
                raise UserError(f"{name}={getattr(self, name)} images per class is too few; use at least 2")
            if getattr(self, name) > 100_000:
                raise UserError(f"{name}={getattr(self, name)} images per class is too many; use at most 100000")
        if not 32 <= self.image_size <= 1024:
            raise UserError(f"image size {self.image_size} is out of range; use 32 to 1024")

    def cache_name(self) -> str:
        if self.photos != BUILTIN_PHOTOS or self.shifted or self.broad or self.manipulations != MANIPULATIONS:
            raise ValueError("only sets of the built-in photographs and forgeries are cached")
        return (f"synth-v{GENERATOR_VERSION}-{self.image_size}px-"
                f"{self.train}-{self.validation}-{self.test}-seed{self.seed}")


@lru_cache(maxsize=2)
def source_photos(photos: str = BUILTIN_PHOTOS) -> tuple[np.ndarray, ...]:
    """The photographs real images are cropped from: the ones shipped inside scikit-image and
    scikit-learn (no download), the pre-training corpus, or every readable image in the folder ``photos``."""
    if photos == PRETRAIN_PHOTOS:
        return _builtin_photos() + _pretrain_photos()
    if photos != BUILTIN_PHOTOS:
        return _folder_photos(Path(photos).expanduser())
    return _builtin_photos()


def _builtin_photos() -> tuple[np.ndarray, ...]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    colour = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.hubble_deep_field(),
              sd.immunohistochemistry(), sd.stereo_motorcycle()[0], sd.retina()]
    gray = [sd.camera(), sd.moon(), sd.coins(), sd.grass(), sd.gravel(), sd.brick()]
    photos = [np.ascontiguousarray(p[..., :3]) for p in colour]
    photos += [np.repeat(g[..., None], 3, axis=-1) for g in gray]
    photos += list(load_sample_images().images)
    return tuple(p.astype(np.uint8) for p in photos)


def _pretrain_photos() -> tuple[np.ndarray, ...]:
    import skimage.data as sd

    # Read from scikit-image's own data folder rather than through sd.<name>(): a function whose file
    # is missing would fetch it from the network.
    files = [Path(sd.data_dir) / n for n in ("cell.png", "clock_motion.png", "microaneurysms.png", "page.png",
                                             "text.png", "motorcycle_right.png")]
    try:
        from matplotlib import cbook

        files.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except (ImportError, OSError):  # matplotlib is optional; its sample data may be stripped
        pass
    missing = []
    for folder in map(Path, PRETRAIN_FOLDERS):
        if not folder.is_dir():
            missing.append(folder)
            continue
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        stems = {p.stem for p in found}
        # mate ships some pictures again at other sizes (Elephants_3840x2160.jpg): one copy is enough.
        files += [p for p in found if not ((m := re.fullmatch(r"(.+)_\d+x\d+", p.stem)) and m.group(1) in stems)]
    if missing:
        packages = sorted({"gnome-backgrounds" if "gnome" in str(f) else "mate-backgrounds" for f in missing})
        _log.warning("pre-training photographs: %s missing; apt-get install %s for the full corpus",
                     ", ".join(map(str, missing)), " ".join(packages))
    return _decode_files([f for f in files if f.is_file()])


def _decode_files(paths: list[Path]) -> tuple[np.ndarray, ...]:
    from dfk.data.decode import BadImage, decode_for_display, read_bytes

    out = []
    for path in paths:
        try:
            # Reduced as it is decoded (a JPEG at a smaller DCT scale), so big photos fit the decode
            # budget; alpha, grey and palette images come out RGB.
            out.append(decode_for_display(read_bytes(path), MAX_PHOTO_SIDE))
        except BadImage:
            continue
    return tuple(out)


def _folder_photos(folder: Path) -> tuple[np.ndarray, ...]:
    from dfk.data.decode import IMAGE_EXTENSIONS

    out = _decode_files(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
    if len(out) < 2:
        raise UserError(f"{folder} has {len(out)} readable photographs; a set needs at least 2 (splices take a second one)")
    return out


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


def forge(img: np.ndarray, rng: np.random.Generator, spec: SynthSpec, source: int
          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``img`` (a crop of photograph ``source``) forged: the fake, its 0/1 mask and the kinds applied."""
    size = img.shape[0]
    return forge_region(img, rng, spec.manipulations, spec.forgeries,
                        donor=lambda r: natural_crop(r, size, exclude=source, photos=spec.photos)[0])


def make_fake(rng: np.random.Generator, spec: SynthSpec, size: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A forged image (``size`` px, default the spec's), its binary mask and the manipulations applied."""
    img, source = natural_crop(rng, size or spec.image_size, photos=spec.photos)
    return forge(img, rng, spec, source)


@dataclass(frozen=True)
class Chain:
    """What happens to an image once made, drawn alike for reals and fakes so it tells nothing of the
    label: what a picture goes through when it is shared (resized, re-compressed)."""

    work: int  # side the image is made (and forged) at, then reduced to the output size
    interpolation: int  # cv2 flag of every resize
    rescale: float  # down to this fraction of the side and up again; 1: not
    jpegs: tuple[int, ...]  # qualities of the JPEG round trips before the final save


def draw_chain(rng: np.random.Generator, params: ForgeryParams, size: int) -> Chain:
    import cv2

    work, rescale, jpegs = size, 1.0, ()
    interpolation = int(rng.choice([cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
    if rng.random() < params.post:
        if rng.random() < 0.5:
            work = round(size * rng.uniform(1.15, 1.6))  # a larger original, shared reduced
        else:
            rescale = float(rng.uniform(0.5, 0.9))
    if rng.random() < params.post:
        lo, hi = params.jpeg_quality
        jpegs = tuple(int(q) for q in rng.integers(lo, hi + 1, size=int(rng.integers(1, 3))))
    return Chain(work, interpolation, rescale, jpegs)


def finish(img: np.ndarray, mask: np.ndarray | None, chain: Chain, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (and mask) after ``chain``, at ``size`` px."""
    import cv2

    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=chain.interpolation)
        if mask is not None:
            m = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
            mask = ((m > 0.5) if (m > 0.5).any() else (m > 0)).astype(np.float32)
    if chain.rescale < 1:
        small = max(8, round(size * chain.rescale))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=chain.interpolation), (size, size),
                         interpolation=chain.interpolation)
    for q in chain.jpegs:
        img = jpeg_roundtrip(np.clip(img, 0, 255), q)
    return np.clip(img, 0, 255), mask


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
                    # Only broad sets draw a chain: the default and shifted ones stay what version 2 wrote.
                    chain = draw_chain(rng, spec.forgeries, spec.image_size) if spec.forgeries.post else None
                    work = chain.work if chain else spec.image_size
                    mask = None
                    if label:
                        img, mask, kinds = make_fake(rng, spec, work)
                    else:
                        img, _ = natural_crop(rng, work, photos=spec.photos)
                        kinds = []
                    if chain is not None:
                        img, mask = finish(img, mask, chain, spec.image_size)
                    if label:
                        (tmp / "masks" / split_dir).mkdir(parents=True, exist_ok=True)
                        Image.fromarray((mask > 0.5).astype(np.uint8) * 255).save(tmp / "masks" / split_dir / f"{stem}.png")
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
