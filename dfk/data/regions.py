"""Where a synthetic forgery goes: the ranges a domain of forgeries draws from and the region shapes.

A detector that only ever sees one region shape learns the shape, not the trace; so the shape is
drawn from ``ForgeryParams.shapes`` and placed anywhere in the image (a heatmap cannot point at
it by looking at the centre). The default and shifted presets keep their single shape (ellipse,
polygon) so the sets users have already cached are still what the generator writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("ellipse", "polygon", "blob", "rectangle")


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
    shapes: tuple[str, ...]  # region shapes drawn from (SHAPES); one shape draws nothing from the rng
    # How far the newer families (self_blend ... noise) move the region, 0 (invisible) to 1 (plain to
    # see): a detector that generalizes has to see subtle blends as well as strong ones.
    strength: tuple[float, float] = (0.5, 1.0)
    # Chance of each post-processing step (a resample; one or two JPEG round trips) applied to reals
    # and fakes alike. 0 draws nothing from the rng, which keeps the default and shifted sets as they were.
    post: float = 0.0


DEFAULT_FORGERIES = ForgeryParams(jpeg_quality=(80, 95), upsample_factors=(2, 4), checker=(10, 20),
                                  double_jpeg_quality=(2, 6), colour_gain=0.4, splice_blur=(0.6, 1.2),
                                  seam=(30, 50), region_size=(0.15, 0.3), shapes=("ellipse",))
SHIFTED_FORGERIES = ForgeryParams(jpeg_quality=(65, 79), upsample_factors=(3,), checker=(4, 9),
                                  double_jpeg_quality=(10, 20), colour_gain=0.22, splice_blur=(1.3, 2.0),
                                  seam=(10, 24), region_size=(0.15, 0.35), shapes=("polygon",),
                                  strength=(0.2, 0.45))
#: For pre-training: every shape and the widest ranges, from plain to barely visible, and the
#: resampling and re-compression real images go through when they are shared, on both classes.
BROAD_FORGERIES = ForgeryParams(jpeg_quality=(60, 98), upsample_factors=(2, 3, 4), checker=(4, 20),
                                double_jpeg_quality=(2, 20), colour_gain=0.3, splice_blur=(0.6, 2.0),
                                seam=(10, 50), region_size=(0.1, 0.38), shapes=SHAPES,
                                strength=(0.1, 1.0), post=0.6)


def region_mask(rng: np.random.Generator, size: int, params: ForgeryParams = DEFAULT_FORGERIES) -> np.ndarray:
    """The forged region as a 0/1 float mask: anywhere in the image, of random size and shape."""
    import cv2

    shape = params.shapes[0] if len(params.shapes) == 1 else str(rng.choice(params.shapes))
    mask = np.zeros((size, size), np.uint8)
    r = size * rng.uniform(*params.region_size)
    ry = min(r * rng.uniform(1.0, 1.4), size * 0.45)
    cx, cy = float(rng.uniform(r, size - r)), float(rng.uniform(ry, size - ry))  # wholly inside the image
    if shape == "polygon":
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(4, 8))))
        radii = rng.uniform(0.6, 1.0, size=len(angles))
        pts = np.stack([cx + r * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif shape == "rectangle":
        # Inscribed in the ellipse's bounds, so a rotated rectangle still stays inside the image.
        box = cv2.boxPoints(((cx, cy), (2 * r * 0.7, 2 * ry * 0.7), float(rng.uniform(0, 180))))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif shape == "blob":
        mask = _blob(rng, size, cx, cy, r, ry)
    if shape == "ellipse" or not mask.any():
        cv2.ellipse(mask, (round(cx), round(cy)), (max(2, round(r)), max(2, round(ry))),
                    float(rng.uniform(-30, 30)), 0, 360, 1, -1)
    return mask.astype(np.float32)


def _blob(rng: np.random.Generator, size: int, cx: float, cy: float, r: float, ry: float) -> np.ndarray:
    """A smooth random blob around (cx, cy): blurred noise added to an elliptical bump, thresholded,
    and only the piece holding the centre kept (a region is one connected piece)."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bump = 1 - ((xx - cx) / r) ** 2 - ((yy - cy) / ry) ** 2
    field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), max(1.0, r / 3))
    field /= field.std() + 1e-6
    mask = ((bump + 0.45 * field) > 0).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=4)
    centre = labels[min(size - 1, round(cy)), min(size - 1, round(cx))]
    return (labels == centre).astype(np.uint8) if centre else np.zeros_like(mask)


def deform(mask: np.ndarray, rng: np.random.Generator, amount: float = 0.04) -> np.ndarray:
    """The mask bent by a smooth random displacement field (``amount`` of the side at most), as
    Face X-ray and Self-Blended Images deform theirs: the boundary then has no fixed geometry."""
    import cv2

    size = mask.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    shift = []
    for _ in range(2):
        f = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), size / 8)
        shift.append(f / (np.abs(f).max() + 1e-6) * amount * size)
    bent = cv2.remap(mask, xx + shift[0], yy + shift[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    bent = (bent > 0.5).astype(np.float32)
    return bent if bent.sum() >= 4 else mask
