"""Drawing Grad-CAM: a heatmap over its image (:func:`overlay`) and a gallery PNG of several images with
their maps and verdicts (:func:`save_gallery`). The maps themselves: :mod:`dfk.explain.gradcam`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Colour-map the heatmap with OpenCV's JET and blend it over the image (uint8 RGB)."""
    import cv2

    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - alpha) * image + alpha * colour, 0, 255))


#: Gallery geometry in inches: panel side, gaps, the caption band above each row, the header.
_PANEL, _GAP, _MARGIN, _CAPTION, _ROW_GAP, _HEADER = 2.3, 0.1, 0.15, 0.42, 0.18, 0.32
_CAPTION_CHARS = 90  # a caption line longer than this loses its middle (long file names)


def _clip_middle(text: str, n: int = _CAPTION_CHARS) -> str:
    return text if len(text) <= n else f"{text[:n // 2 - 1]}…{text[-(n - n // 2):]}"


def save_gallery(images, heatmaps, probs, threshold: float, path: Path, titles: Sequence[str] = ()) -> Path:
    """One PNG: column headings once (original | Grad-CAM | overlay), then a row per image with
    its caption (the title, then p(fake), the threshold and the verdict) in a band above the row.

    Placed by hand in inches rather than by tight/constrained layout: the caption band has a fixed
    height, so a caption can never run into a heading or a neighbouring row at any row count.
    """
    from dfk.metrics.binary import verdict as label_of
    from dfk.metrics.plots import DPI, pyplot

    plt = pyplot()
    n = len(images)
    width = 2 * _MARGIN + 3 * _PANEL + 2 * _GAP
    row = _CAPTION + _PANEL + _ROW_GAP
    height = _HEADER + n * row + _MARGIN
    fig = plt.figure(figsize=(width, height))

    def box(x, y, w, h):  # inches from the top-left corner -> figure fractions
        return [x / width, 1 - (y + h) / height, w / width, h / height]

    for j, heading in enumerate(("original", "Grad-CAM (fake score)", "overlay")):
        x = _MARGIN + j * (_PANEL + _GAP) + _PANEL / 2
        fig.text(x / width, 1 - (_HEADER - 0.08) / height, heading, ha="center", va="bottom",
                 fontsize=10, fontweight="bold")
    for i in range(n):
        top = _HEADER + i * row
        img = np.uint8(np.clip(images[i], 0, 255))
        label = label_of(probs[i], threshold)
        title = titles[i] if i < len(titles) and titles[i] else f"image {i + 1}"
        verdict = f"p(fake) = {probs[i]:.3f}, threshold {threshold:.3f}  →  {label}"
        fig.text(_MARGIN / width, 1 - (top + 0.04) / height, _clip_middle(title), ha="left", va="top",
                 fontsize=8.5, fontweight="bold")
        fig.text(_MARGIN / width, 1 - (top + 0.22) / height, verdict, ha="left", va="top", fontsize=8.5)
        for j, pic in enumerate((img, heatmaps[i], overlay(img, heatmaps[i]))):
            ax = fig.add_axes(box(_MARGIN + j * (_PANEL + _GAP), top + _CAPTION, _PANEL, _PANEL))
            ax.imshow(pic, cmap="jet" if pic.ndim == 2 else None, vmin=0, vmax=1 if pic.ndim == 2 else None)
            ax.set_anchor("N")  # a wide image sits right under its caption
            ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


#: A gallery shows at most this many rows (one image each); the overlays cover every image.
GALLERY_ROWS = 24
