"""Turn image bytes of any common format into 8-bit RGB at a fixed size.

One function serves training, evaluation, Grad-CAM and serving, so a model always sees pixels
prepared the same way. Pillow decodes (it knows JPEG, PNG, BMP, GIF, WebP, TIFF, CMYK, 16-bit);
OpenCV resizes (area interpolation when shrinking, which does not alias).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFile

#: Images above this many pixels are rejected from their header, never decoded.
MAX_PIXELS = 50_000_000

#: File extensions the scanner treats as images (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Pillow's own bomb guard warns at 89 Mpx and errors at twice that; ours is stricter and runs
# on the header, so Pillow's is turned off to give one consistent message.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(ValueError):
    """Bytes that are not a usable image; the message says why."""


class ImageTooLarge(BadImage):
    """An image whose header declares more pixels than :data:`MAX_PIXELS`."""


def open_image(data: bytes) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    if not data:
        raise BadImage("empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError...
        raise BadImage(f"not an image ({type(exc).__name__})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageTooLarge(f"{w}x{h} pixels exceeds the {MAX_PIXELS // 1_000_000} Mpx limit (decompression bomb?)")
    if w < 1 or h < 1:
        raise BadImage("image has no pixels")
    return im


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Decode to an 8-bit RGB array: grayscale, RGBA, palette, CMYK and 16-bit all handled."""
    try:
        im.seek(0)  # first frame of GIF/WebP animations and multi-page TIFFs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
            arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Composite on white: transparent areas look as a viewer shows them.
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, rgba)
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(f"cannot decode image ({type(exc).__name__}: {str(exc)[:80]})") from None
    return arr


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    shrinking = arr.shape[0] > size or arr.shape[1] > size
    return cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Bytes -> uint8 RGB array of shape (size, size, 3), or the original size when ``size`` is None.

    Raises :class:`BadImage` with a reason for anything that is not a usable image.
    """
    im = open_image(data)
    if size is not None and im.format == "JPEG":
        # Let libjpeg decode at a reduced scale (DCT scaling) when the target is much smaller.
        im.draft("RGB", (size, size))
    arr = to_rgb_array(im)
    return resize(arr, size) if size is not None else arr


def decode_for_display(data: bytes, max_side: int) -> np.ndarray:
    """Bytes -> uint8 RGB array whose longer side is at most ``max_side``, aspect kept."""
    im = open_image(data)
    if im.format == "JPEG":
        im.draft("RGB", (max_side, max_side))
    arr = to_rgb_array(im)
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    import cv2

    return cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def read_image(path: str, size: int | None = None) -> np.ndarray:
    """Read and decode a file; unreadable files raise :class:`BadImage`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror})") from None
    return decode_image(data, size)


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (recursively, hidden files skipped) in folders."""
    from dfk.errors import UserError

    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.exists():
            found.append(item)
        else:
            raise UserError(f"{item} does not exist")
    if not found:
        raise UserError(f"no image files in {', '.join(map(str, inputs))}")
    return found


class ImageBatches:
    """Decoded batches of image files at ``image_size``: ``(files, array, files tried)`` per batch.

    An unreadable file is left out of its batch, counted in ``skipped`` and passed to ``on_skip``.
    """

    def __init__(self, files: Sequence[Path], image_size: int, batch_size: int,
                 on_skip: Callable[[Path, str], None] | None = None) -> None:
        self.files, self.image_size, self.batch_size, self.on_skip = list(files), image_size, batch_size, on_skip
        self.skipped = 0

    def __iter__(self):
        for start in range(0, len(self.files), self.batch_size):
            chunk = self.files[start:start + self.batch_size]
            batch, names = [], []
            for f in chunk:
                try:
                    batch.append(read_image(str(f), self.image_size))
                    names.append(f)
                except BadImage as exc:
                    self.skipped += 1
                    if self.on_skip:
                        self.on_skip(f, str(exc))
            x = np.stack(batch).astype(np.float32) if batch else np.zeros((0, self.image_size, self.image_size, 3), np.float32)
            yield names, x, len(chunk)
