"""How a picture is brought to a model: resized to its input, or, for a native-resolution model
(``ModelSpec.native_resolution``), seen at its own resolution.

One rule, :func:`native_dims`, says which: a picture larger than the input is seen at its own
resolution (its longer side capped at :data:`NATIVE_MAX_SIDE`); any other is resized as for any
model. Training cuts a random crop of the input size from it (:func:`training_view`; the tf.data
pipeline cuts the same pixels, :func:`crop_offset`); scoring takes the whole picture in one pass
(:func:`scoring_views`, :func:`decode_views`), for every entry point alike: predict, evaluation, the
pyfunc, Spark, the app and Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from dfk.data.decode import BadImage, decode_image, open_image, orient, orientation, read_bytes, read_image, resize, to_rgb_array

#: A model that reads an image at its own resolution (``ModelSpec.native_resolution``) first brings a
#: picture whose longer side exceeds this down to it (aspect kept, area interpolation): a 12 Mpx photo
#: would cost ~40x a 1 Mpx one for traces that a camera's demosaicing and JPEG spread over a few pixels.
NATIVE_MAX_SIDE = 1024

#: How a native-resolution model scores a picture: ``"full"``, the whole (capped) picture in one forward
#: pass, or ``"crops"``, the mean probability of up to :data:`NATIVE_CROPS` grid crops of the input size.
#: ``full`` is the default: measured by bench/crops.py (docs/BENCHMARKS.md, "Native resolution"), srm
#: trained on native crops scores test ROC-AUC 0.809 whole against 0.782 by 9 crops averaged (0.746 for
#: today's resize, both ways), at one forward pass per picture instead of up to 9. The net pools its whole
#: map with average + max, so the strongest trace anywhere counts, which a mean over crops dilutes; and
#: its Grad-CAM is one map of the picture as scored. CNNDetection scores with --no_crop the same way.
NATIVE_SCORING = "full"
#: The most crops ``"crops"`` scoring takes (a grid of up to 3 x 3 covering the picture).
NATIVE_CROPS = 9


def native_dims(h: int, w: int, size: int) -> tuple[int, int] | None:
    """The ``(height, width)`` a native-resolution model sees a decoded ``h`` x ``w`` picture at (its
    longer side capped at :data:`NATIVE_MAX_SIDE`), or None when the picture is resized to ``size`` as
    for any model: it is not larger than ``size`` (or, once capped, narrower than ``size`` on a side)."""
    s = min(1.0, NATIVE_MAX_SIDE / max(h, w))
    ch, cw = (h, w) if s >= 1 else (max(1, round(h * s)), max(1, round(w * s)))
    if min(ch, cw) < size or (ch == size and cw == size):
        return None
    return ch, cw


def larger_than_input(paths: Sequence[str], info: Mapping[str, object] | None, image_size: int) -> bool:
    """Whether a native-resolution model would see any of ``paths`` at its own resolution (a picture
    larger than ``image_size``, :func:`native_dims`, from the scan's header ``info``; a file the scan did
    not read may be)."""
    if info is None:
        return bool(len(paths))
    return any(info.get(p) is None or native_dims(info[p].height, info[p].width, image_size) is not None
               for p in paths)


def cap(arr: np.ndarray, dims: tuple[int, int]) -> np.ndarray:
    """``arr`` brought to ``dims`` (:func:`native_dims`): unchanged, or shrunk with area interpolation."""
    import cv2

    if arr.shape[:2] == tuple(dims):
        return arr
    return cv2.resize(arr, (dims[1], dims[0]), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- training crops
def crop_offset(u: float, span: int, size: int) -> int:
    """Top (or left) of a ``size`` crop in ``span`` at the fraction ``u`` in [0, 1), in float32 as the
    tf.data pipeline computes it, so both decoders cut the same pixels."""
    return int(min(np.floor(np.float32(u) * np.float32(span - size + 1)), span - size))


def training_view(arr: np.ndarray, size: int, u: tuple[float, float]) -> np.ndarray:
    """A native-resolution model's training input from a picture decoded by :func:`decode_native`:
    a ``size`` crop at fractions ``u`` (y, x) of the (capped) picture, or the picture resized to ``size``."""
    dims = native_dims(*arr.shape[:2], size)
    if dims is None:
        return resize(arr, size)
    arr = cap(arr, dims)
    y, x = crop_offset(u[0], dims[0], size), crop_offset(u[1], dims[1], size)
    return np.ascontiguousarray(arr[y:y + size, x:x + size])


# ----------------------------------------------------------------------------- scoring views
def crop_grid(h: int, w: int, size: int, n: int = NATIVE_CROPS) -> list[tuple[int, int]]:
    """``(top, left)`` of up to ``n`` ``size`` crops on a grid covering an ``h`` x ``w`` picture."""
    per_side = max(1, int(np.sqrt(n)))
    ny, nx = min(per_side, -(-h // size)), min(per_side, -(-w // size))
    ys = np.linspace(0, h - size, ny).round().astype(int) if ny > 1 else [(h - size) // 2]
    xs = np.linspace(0, w - size, nx).round().astype(int) if nx > 1 else [(w - size) // 2]
    return [(int(y), int(x)) for y in ys for x in xs]


def scoring_views(arr: np.ndarray, size: int, native: bool = False, how: str | None = None) -> np.ndarray:
    """How a decoded picture is brought to the model for scoring; every entry point calls this (or
    :func:`decode_views`). Returns ``(k, H, W, 3)`` uint8 views whose probabilities of fake, averaged,
    are the picture's: one ``size`` x ``size`` resize for most models; for a native-resolution model
    (a picture larger than ``size``) the whole capped picture (``how="full"``) or a grid of crops."""
    dims = native_dims(*arr.shape[:2], size) if native else None
    if dims is None:
        return resize(arr, size)[None]
    arr = cap(arr, dims)
    if (how or NATIVE_SCORING) == "full":
        return arr[None]
    return np.stack([arr[y:y + size, x:x + size] for y, x in crop_grid(*dims, size)])


def decode_native(data: bytes) -> np.ndarray:
    """Bytes -> uint8 RGB at the resolution a native-resolution model reads (a JPEG of more than twice
    :data:`NATIVE_MAX_SIDE` a side decodes at a reduced scale, as for any size asked), upright."""
    im = open_image(data, NATIVE_MAX_SIDE)
    turn = orientation(im)
    arr = to_rgb_array(im)
    im.close()
    return orient(arr, turn)


def scoring_picture(data: bytes, size: int, native: bool = False) -> np.ndarray:
    """Bytes -> the picture a model's scoring views are cut from: for a native-resolution model and a
    picture larger than ``size``, the picture at its own resolution (capped); else, as for any model, the
    picture resized to ``size`` (:func:`dfk.data.decode.decode_image`). Its :func:`scoring_views` are the
    file's, so these pixels, stored losslessly, stand for the file (Spark hands them to the pyfunc)."""
    if native:
        arr = decode_native(data)
        dims = native_dims(*arr.shape[:2], size)
        if dims is not None:
            return cap(arr, dims)
    return decode_image(data, size)


def decode_views(data: bytes, size: int, native: bool = False) -> np.ndarray:
    """Bytes -> the views :func:`scoring_views` gives of the file's :func:`scoring_picture`."""
    return scoring_views(scoring_picture(data, size, native), size, native)


class ImageBatches:
    """Decoded batches of image files at ``image_size``: ``(files, array, files tried)`` per batch (for a
    native-resolution model, ``array`` is a list of each file's :func:`decode_views`).

    An unreadable file is left out of its batch, counted in ``skipped`` and passed to ``on_skip``.
    """

    def __init__(self, files: Sequence[Path], image_size: int, batch_size: int,
                 on_skip: Callable[[Path, str], None] | None = None, native: bool = False) -> None:
        self.files, self.image_size, self.batch_size, self.on_skip = list(files), image_size, batch_size, on_skip
        self.native = native  # a native-resolution model's batch is a list of each image's views (decode_views)
        self.skipped = 0

    def __iter__(self):
        for start in range(0, len(self.files), self.batch_size):
            chunk = self.files[start:start + self.batch_size]
            batch, names = [], []
            for f in chunk:
                try:
                    batch.append(decode_views(read_bytes(f), self.image_size, True) if self.native
                                 else read_image(str(f), self.image_size))
                    names.append(f)
                except BadImage as exc:
                    self.skipped += 1
                    if self.on_skip:
                        self.on_skip(f, str(exc))
            if self.native:
                yield names, batch, len(chunk)
                continue
            x = np.stack(batch).astype(np.float32) if batch else np.zeros((0, self.image_size, self.image_size, 3), np.float32)
            yield names, x, len(chunk)
