"""The manipulation families of the synthetic set: one function each, in one registry.

Every family takes the image (float32 RGB, 0..255), the rng and a :class:`Forging` (the region's
mask, the domain's ranges, a way to fetch a crop of another photograph) and returns the image the
region should show plus a feather sigma; :func:`forge_region` blends that in through the softened
mask, so nothing changes far from the mask whatever the family.

* classic (generator and editing traces): ``splice``, ``upsample``, ``colour``, ``double_jpeg``;
* blends of real images (Self-Blended Images, Shiohara & Yamasaki CVPR 2022; Face X-ray, Li et al.
  CVPR 2020): ``self_blend`` (the image blended with a slightly transformed copy of itself) and
  ``boundary_blend`` (another photograph's region, colour-matched to the host, so mostly the
  blending boundary and a texture mismatch remain);
* editing: ``copy_move``, ``inpaint``, ``resample`` (rotated / scaled in place), ``retouch``
  (smoothed or sharpened), ``noise`` (another noise level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dfk.data.regions import ForgeryParams, deform, region_mask

MANIPULATIONS = ("splice", "upsample", "colour", "double_jpeg")
ALL_MANIPULATIONS = MANIPULATIONS + ("self_blend", "boundary_blend", "copy_move", "inpaint", "resample",
                                     "retouch", "noise")
#: Forgeries made from real images alone (no fake examples needed): the reals-only mode uses these.
SELF_BLENDS = ("self_blend", "boundary_blend")
#: Pre-training uses only these, so that cross-manipulation and few-shot protocols score dfk's
#: shipped weights on kinds they never saw (HELD_OUT_MANIPULATIONS).
PRETRAIN_MANIPULATIONS = ("self_blend", "boundary_blend", "resample", "retouch", "noise")
HELD_OUT_MANIPULATIONS = tuple(k for k in ALL_MANIPULATIONS if k not in PRETRAIN_MANIPULATIONS)
#: Manipulations that paste a region and so leave a blending seam around it.
SEAMED = frozenset({"splice", "colour", "double_jpeg"})


@dataclass(frozen=True)
class Forging:
    """What a family may look at besides the image."""

    params: ForgeryParams
    mask: np.ndarray  # the region, 0/1 float
    donor: Callable[[np.random.Generator], np.ndarray]  # a crop of another photograph, same size


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", img.astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _strength(rng: np.random.Generator, f: Forging) -> float:
    return float(rng.uniform(*f.params.strength))


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask > 0.5)
    return float(xs.mean()), float(ys.mean())


# ----------------------------------------------------------------------------- classic
def _splice(img, rng, f: Forging):
    import cv2

    donor = f.donor(rng)
    # The donor was shot elsewhere: it is a little softer or sharper than the host.
    if rng.random() < 0.5:
        donor = cv2.GaussianBlur(donor, (0, 0), rng.uniform(*f.params.splice_blur))
    return donor, rng.uniform(0.8, 2.0)


def _upsample(img, rng, f: Forging):
    import cv2

    size = img.shape[0]
    k = int(rng.choice(f.params.upsample_factors))
    small = cv2.resize(img, (-(-size // k), -(-size // k)), interpolation=cv2.INTER_AREA)
    region = np.repeat(np.repeat(small, k, axis=0), k, axis=1)[:size, :size]  # nearest-neighbour blocks
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0) * rng.uniform(*f.params.checker)
    fx, fy = rng.uniform(0.2, 0.45, size=2)
    peak = np.sin(2 * np.pi * (fx * xx + fy * yy)) * rng.uniform(0.5, 1.0) * f.params.checker[1] * 0.6
    return region + (checker + peak)[..., None], rng.uniform(0.5, 1.0)


def _colour(img, rng, f: Forging):
    off = f.params.colour_gain
    gains = rng.uniform(1 - off, 1 + off, size=3)
    gains[int(rng.integers(3))] = rng.choice([1 - off, 1 + off])  # at least one channel clearly off
    gamma = rng.uniform(0.75, 1.3)
    region = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma * gains
    return region, rng.uniform(1.0, 2.5)


def _double_jpeg(img, rng, f: Forging):
    dy, dx = (int(v) for v in rng.integers(1, 8, size=2))
    shifted = np.roll(img, (dy, dx), axis=(0, 1))
    lo, hi = f.params.double_jpeg_quality
    region = np.roll(jpeg_roundtrip(shifted, int(rng.integers(lo, hi + 1))), (-dy, -dx), axis=(0, 1))
    return region, rng.uniform(0.5, 1.0)


# ----------------------------------------------------------------------------- blends of real images
def _self_blend(img, rng, f: Forging):
    """SBI: the same image, jittered in colour, blurred or sharpened, re-sampled a little, maybe
    re-compressed; only the statistics mismatch and the boundary tell it from the host."""
    import cv2

    s = _strength(rng, f)
    size = img.shape[0]
    x = np.clip(img, 0, 255) / 255.0
    hsv = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-12, 12) * s) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + rng.uniform(-0.3, 0.3) * s), 0, 1)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    x = (x - x.mean()) * (1 + rng.uniform(-0.2, 0.2) * s) + x.mean() * (1 + rng.uniform(-0.15, 0.15) * s)
    x = x + rng.uniform(-20, 20, size=3).astype(np.float32) * s
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), 0.3 + 1.2 * s)
    else:
        x = x + (0.3 + 1.2 * s) * (x - cv2.GaussianBlur(x, (0, 0), 1.0))  # unsharp mask
    scale = 1 + rng.uniform(-0.05, 0.05)
    tx, ty = rng.uniform(-3, 3, size=2) * size / 64
    m = cv2.getRotationMatrix2D((size / 2, size / 2), 0.0, scale)
    m[:, 2] += (tx, ty)
    x = cv2.warpAffine(x, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.3:
        x = jpeg_roundtrip(np.clip(x, 0, 255), int(rng.integers(60, 96)))
    return x, rng.uniform(1.0, 3.0)


def _boundary_blend(img, rng, f: Forging):
    """Face X-ray: another photograph's region with the host's colour statistics (Reinhard transfer
    in Lab, inside the mask), so mostly the blending boundary and a noise/texture mismatch remain."""
    import cv2

    donor = f.donor(rng)
    inside = f.mask > 0.5
    host_lab = cv2.cvtColor((np.clip(img, 0, 255) / 255.0).astype(np.float32), cv2.COLOR_RGB2LAB)
    donor_lab = cv2.cvtColor((donor / 255.0).astype(np.float32), cv2.COLOR_RGB2LAB)
    mu_h, sd_h = host_lab[inside].mean(0), host_lab[inside].std(0)
    mu_d, sd_d = donor_lab[inside].mean(0), donor_lab[inside].std(0)
    matched = (donor_lab - mu_d) / (sd_d + 1e-3) * sd_h + mu_h
    matched[..., 0] = np.clip(matched[..., 0], 0, 100)
    region = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0
    if rng.random() < 0.5:
        region = cv2.GaussianBlur(region, (0, 0), 0.3 + rng.uniform(0, 1.2) * _strength(rng, f))
    return region, rng.uniform(1.0, 3.0)


# ----------------------------------------------------------------------------- editing
def _copy_move(img, rng, f: Forging):
    import cv2

    size = img.shape[0]
    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.5) * size  # far enough to be another place
    m = np.float32([[1, 0, dist * np.cos(angle)], [0, 1, dist * np.sin(angle)]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT), \
        rng.uniform(0.5, 1.5)


def _inpaint(img, rng, f: Forging):
    import cv2

    hole = cv2.dilate((f.mask > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8))
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    filled = cv2.inpaint(np.clip(img, 0, 255).astype(np.uint8), hole, 3, method).astype(np.float32)
    # Only the hole is taken from the filled copy: elsewhere the image keeps its un-rounded values.
    return np.where(hole[..., None] > 0, filled, img), rng.uniform(0.5, 1.0)


def _resample(img, rng, f: Forging):
    import cv2

    s = _strength(rng, f)
    size = img.shape[0]
    angle = rng.choice([-1.0, 1.0]) * rng.uniform(2, 2 + 18 * s)
    scale = 1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.02 + 0.18 * s) if rng.random() < 0.6 else 1.0
    m = cv2.getRotationMatrix2D(_centre(f.mask), float(angle), float(scale))
    flags = cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC
    return cv2.warpAffine(img, m, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT), rng.uniform(0.5, 1.5)


def _retouch(img, rng, f: Forging):
    import cv2

    s = _strength(rng, f)
    x = np.clip(img, 0, 255).astype(np.float32)
    how = int(rng.integers(4))
    if how == 0:
        region = cv2.bilateralFilter(x, 5, 15 + 60 * s, 3)
    elif how == 1:
        region = cv2.medianBlur(x, 3 if s < 0.5 else 5)
    elif how == 2:
        region = cv2.GaussianBlur(x, (0, 0), 0.5 + 1.5 * s)
    else:
        region = x + (0.4 + 1.6 * s) * (x - cv2.GaussianBlur(x, (0, 0), rng.uniform(0.8, 2.0)))
    return region, rng.uniform(1.0, 2.5)


def _noise(img, rng, f: Forging):
    import cv2

    s = _strength(rng, f)
    how = int(rng.integers(3))
    if how == 0:
        region = img + rng.standard_normal(img.shape).astype(np.float32) * (1.5 + 8 * s)
    elif how == 1:  # Poisson-like: the noise grows with brightness, as a sensor's shot noise does
        region = img + rng.standard_normal(img.shape).astype(np.float32) * np.sqrt(np.clip(img, 0, 255)) * (0.15 + 0.6 * s)
    else:  # the region is cleaner than the rest: denoised
        u8 = np.clip(img, 0, 255).astype(np.uint8)
        region = cv2.fastNlMeansDenoisingColored(u8, None, 3 + 9 * s, 3 + 9 * s, 5, 11).astype(np.float32)
        region = img + (region - u8)  # what the denoiser removed, taken off the un-rounded image
    return region, rng.uniform(0.5, 1.5)


_APPLY: dict[str, Callable] = {
    "splice": _splice, "upsample": _upsample, "colour": _colour, "double_jpeg": _double_jpeg,
    "self_blend": _self_blend, "boundary_blend": _boundary_blend, "copy_move": _copy_move, "inpaint": _inpaint,
    "resample": _resample, "retouch": _retouch, "noise": _noise,
}


def forge_region(img: np.ndarray, rng: np.random.Generator, manipulations: tuple[str, ...],
                 params: ForgeryParams, donor: Callable[[np.random.Generator], np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``img`` forged inside a random region by one or two of ``manipulations``: the forged image,
    the region's 0/1 mask and the kinds applied. ``img`` itself is left as it was."""
    import cv2

    size = img.shape[0]
    mask = region_mask(rng, size, params)
    n = min(len(manipulations), int(rng.integers(1, 3)))
    kinds = list(rng.choice(manipulations, size=n, replace=False))
    if any(k in SELF_BLENDS for k in kinds):
        mask = deform(mask, rng)
    forging = Forging(params, mask, donor)
    for kind in kinds:
        region, feather = _APPLY[kind](img, rng, forging)
        soft = cv2.GaussianBlur(mask, (0, 0), feather)[..., None]
        img = img * (1 - soft) + np.clip(region, 0, 255) * soft
        if kind in SEAMED:
            # The blending boundary of a pasted region: a thin halo brighter or darker than both sides.
            img = img + 4 * soft * (1 - soft) * rng.choice([-1.0, 1.0]) * rng.uniform(*params.seam)
    return np.clip(img, 0, 255), mask, [str(k) for k in kinds]
