"""How faithful Grad-CAM maps are where the truth is known: the built-in set's fakes carry masks.

The pointing game (the heatmap's maximum inside the forged region) and the share of heatmap mass
inside it, beside two baselines a map must beat: smooth random maps (chance) and a Gaussian at the
image centre (what a map scores by knowing only where forgeries tend to be).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass
class Faithfulness:
    pointing_game: float  # share of fakes whose heatmap maximum lies inside the mask
    mask_energy: float  # mean share of heatmap mass inside the mask
    pointing_game_random: float  # the same for random heatmaps (the chance level)
    mask_energy_random: float
    pointing_game_centre: float  # the same for a Gaussian at the image centre (the centre prior)
    mask_energy_centre: float
    n: int

    @property
    def beats_baselines(self) -> bool:
        """The heatmaps point at forged regions more often than the stronger of both baselines."""
        return self.pointing_game > max(self.pointing_game_random, self.pointing_game_centre)

    def metrics(self) -> dict[str, float]:
        return {f"gradcam_{k}": float(v) for k, v in dataclasses.asdict(self).items() if k != "n"}


def _random_heatmaps(rng: np.random.Generator, shape) -> np.ndarray:
    """Smooth random heatmaps, as blobby as a Grad-CAM upsampled from a coarse grid."""
    import cv2

    n, h, w = shape
    coarse = rng.random((n, 8, 8)).astype(np.float32)
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in coarse])


#: Width of the centre-prior heatmap, as a fraction of the image side.
CENTRE_SIGMA = 0.25


def _centre_heatmaps(shape) -> np.ndarray:
    """A Gaussian at the image centre: what a heatmap scores by knowing only where forgeries tend to be."""
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-(((yy - (h - 1) / 2) / (CENTRE_SIGMA * h)) ** 2 + ((xx - (w - 1) / 2) / (CENTRE_SIGMA * w)) ** 2) / 2)
    return np.broadcast_to(g, (n, h, w))


def score_against_masks(heatmaps: np.ndarray, masks: np.ndarray, seed: int = 0) -> Faithfulness:
    def scores(hm):
        flat = hm.reshape(len(hm), -1)
        m = masks.reshape(len(masks), -1) > 0
        hit = m[np.arange(len(hm)), flat.argmax(axis=1)]
        energy = (flat * m).sum(1) / np.maximum(flat.sum(1), 1e-12)
        return float(hit.mean()), float(energy.mean())

    pg, me = scores(heatmaps)
    pgr, mer = scores(_random_heatmaps(np.random.default_rng(seed), heatmaps.shape))
    pgc, mec = scores(_centre_heatmaps(heatmaps.shape))
    return Faithfulness(pg, me, pgr, mer, pgc, mec, len(heatmaps))


# ----------------------------------------------------------------------------- in a training run
