"""Turn image bytes of an allowed format into 8-bit RGB at a fixed size, within a memory budget.

One function serves training, evaluation, Grad-CAM, serving and the web app, so a model always
sees pixels prepared the same way. Pillow decodes, but only the formats in
:data:`ALLOWED_FORMATS` (it knows ~40 more, FITS and PSD among them, each more code facing
untrusted bytes); OpenCV resizes (area interpolation when shrinking, which does not alias). How a
picture is then brought to a model (resized, or at its own resolution) is :mod:`dfk.data.views`.

Every image is checked from its header before any pixel is decoded: its pixel count against
:data:`MAX_PIXELS` (Pillow's own guard, set to the same number) and its decoded size against
:data:`MAX_DECODED_BYTES`; all decodes in one process share :data:`DECODE_MEMORY`, so many
concurrent requests cannot add up past it. The EXIF orientation is applied, as a viewer does.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile

#: Pillow format names dfk decodes: JPEG (which Pillow opens as MPO when it carries more frames),
#: PNG, BMP, GIF, WebP, TIFF.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

#: Images above this many pixels are refused from their header, never decoded.
MAX_PIXELS = 50_000_000

#: Bytes one image's pixels may take once decoded (width x height x max(bands, 3) x bytes per
#: sample, after libjpeg's reduced-size decoding where a size is asked). 64 MiB is a 22 Mpx RGB or a
#: 16 Mpx RGBA picture at full size; a JPEG of any size up to MAX_PIXELS fits when a size is asked.
#: Decoding and converting one image peaks at under five times this (libwebp keeps a buffer of its
#: own; PNG ~2.5x; measured by bench.hostile, docs/BENCHMARKS.md).
MAX_DECODED_BYTES = 64 * 2**20

#: Decoded bytes all threads of one process may hold at once; a decode waits until its share is
#: free, so 16 concurrent bombs cost what two do.
DECODE_MEMORY = 2 * MAX_DECODED_BYTES

#: File extensions the scanner treats as images (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".mpo", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Pillow's bomb guard, at our limit: it warns above MAX_PIXELS (made an error here) and raises
# above twice that, also for sizes it learns while decoding (a GIF frame larger than its screen).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a BadImage, not grey pixels

_EXIF_ORIENTATION = 0x0112
_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF or TIFF"


class BadImage(ValueError):
    """Bytes that are not a usable image; the message says why."""


class ImageTooLarge(BadImage):
    """An image over :data:`MAX_PIXELS` or :data:`MAX_DECODED_BYTES`, refused from its header."""


def _too_many_pixels(what: str) -> ImageTooLarge:
    return ImageTooLarge(f"{what} exceeds the {MAX_PIXELS // 1_000_000} Mpx limit (decompression bomb?)")


def _pillow_bomb(exc: Exception) -> ImageTooLarge:
    """Pillow's DecompressionBombError/Warning as the same message as ours."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return _too_many_pixels(f"{int(m.group(1)):,} pixels" if m else "the image")


class _MemoryBudget:
    """A semaphore counted in bytes (threading.Semaphore counts units of one)."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int):
        n = min(n, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_BUDGET = _MemoryBudget(DECODE_MEMORY)


def decoded_bytes(im: Image.Image) -> int:
    """Bytes of the first frame's pixels once decoded (at least 3 bands: the result is RGB)."""
    w, h = im.size
    sample = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith("I;16") else 1
    return w * h * max(3, len(im.getbands())) * sample


def open_header(data: bytes | str | os.PathLike) -> Image.Image:
    """Open (header only): an allowed format with at most :data:`MAX_PIXELS` pixels, or :class:`BadImage`."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not data:
            raise BadImage("empty file")
        data = io.BytesIO(data)
    try:
        im = Image.open(data, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc) from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"not an image dfk reads ({_FORMATS_TEXT})") from None
    except Exception as exc:  # OSError, SyntaxError, struct.error... from a broken header
        raise BadImage(f"not an image ({type(exc).__name__})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise _too_many_pixels(f"{w}x{h} pixels")
    if w < 1 or h < 1:
        im.close()
        raise BadImage("image has no pixels")
    return im


def check_budget(im: Image.Image, size: int | None = None) -> None:
    """Refuse an opened image whose pixels would take more than :data:`MAX_DECODED_BYTES`.

    ``size``: the side the pixels are wanted at; a JPEG is then set to decode at a reduced scale
    (libjpeg's DCT scaling, ``Image.draft``) and counted at that scale.
    """
    if size is not None and im.format in ("JPEG", "MPO"):
        im.draft("RGB", (size, size))
    need = decoded_bytes(im)
    if need > MAX_DECODED_BYTES:
        im.close()
        raise ImageTooLarge(f"{im.size[0]}x{im.size[1]} {im.mode} needs {need / 2**20:.0f} MiB decoded, over the "
                            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB budget per image (decompression bomb?)")


def open_image(data: bytes | str | os.PathLike, size: int | None = None) -> Image.Image:
    """Open (header only) and check format, pixel count and decoded size before anything is decoded."""
    im = open_header(data)
    check_budget(im, size)
    return im


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 when absent or unreadable)."""
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if 1 <= value <= 8 else 1


def header_orientation(im: Image.Image) -> int:
    """:func:`orientation` as far as the header tells, without decoding: 0 when only decoding could
    tell (a PNG's EXIF may sit in an ``eXIf`` or text chunk after its pixels; Pillow then reads it)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 0
    return orientation(im)


def orient(arr: np.ndarray, value: int) -> np.ndarray:
    """Apply EXIF orientation ``value`` to an (H, W, C) array, as ``PIL.ImageOps.exif_transpose`` does.

    Done with numpy on the (small) result rather than by Pillow on the full-size decode: no copy.
    """
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[value](arr)) if value in ops else arr


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Decode to an 8-bit RGB array: grayscale, RGBA, palette, CMYK and 16-bit all handled.

    Runs within the process's :data:`DECODE_MEMORY`; Pillow's bomb guard still watches sizes
    learnt while decoding.
    """
    try:
        with _BUDGET.hold(decoded_bytes(im)):
            im.seek(0)  # first frame of GIF/WebP animations and multi-page TIFFs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's chatter about odd metadata
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
            if im.size[0] * im.size[1] > MAX_PIXELS:  # a frame larger than the header said
                raise _too_many_pixels(f"{im.size[0]}x{im.size[1]} pixels")
            # The source image is closed as soon as its pixels are copied: Pillow (and libwebp's
            # decoder it keeps) hold as much again until then.
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                im.close()
                top = 65535.0 if arr.max(initial=0) > 255 else 255.0
                arr /= top  # in place: the same arithmetic as arr / top * 255, without two more copies
                arr *= 255.0
                np.clip(arr, 0, 255, out=arr)
                gray = arr.astype(np.uint8)
                del arr
                return np.repeat(gray[..., None], 3, axis=-1)
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
                # Composite on white: transparent areas look as a viewer shows them. Pasting through the
                # alpha band costs one RGB canvas (alpha_composite needed three RGBA copies).
                rgba = im if im.mode == "RGBA" else im.convert("RGBA")
                rgb = Image.new("RGB", im.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba)
                del rgba
            else:
                rgb = im if im.mode == "RGB" else im.convert("RGB")
            if rgb is not im:
                im.close()
            return np.asarray(rgb, dtype=np.uint8)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc) from None
    except Exception as exc:
        raise BadImage(f"cannot decode image ({type(exc).__name__}: {str(exc)[:80]})") from None


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    shrinking = arr.shape[0] > size or arr.shape[1] > size
    return cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Bytes -> uint8 RGB array of shape (size, size, 3), or the original size when ``size`` is None.

    Upright as a viewer shows it (EXIF orientation applied). Raises :class:`BadImage` with a reason
    for anything that is not a usable image.
    """
    im = open_image(data, size)
    turn = orientation(im)
    arr = to_rgb_array(im)
    im.close()
    return orient(resize(arr, size) if size is not None else arr, turn)


def decode_for_display(data: bytes, max_side: int) -> np.ndarray:
    """Bytes -> uint8 RGB array whose longer side is at most ``max_side``, aspect kept, upright."""
    im = open_image(data, max_side)
    turn = orientation(im)
    arr = to_rgb_array(im)
    im.close()
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        import cv2

        arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return orient(arr, turn)


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; an unreadable file raises :class:`BadImage`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror})") from None


def read_image(path: str, size: int | None = None) -> np.ndarray:
    """Read and decode a file; unreadable files raise :class:`BadImage`."""
    return decode_image(read_bytes(path), size)


def collect_images(inputs: Sequence[str | os.PathLike], extensions: frozenset[str] | set[str] | None = None,
                   what: str = "image") -> list[Path]:
    """Files named directly, or found (recursively, hidden files skipped) in folders with one of
    ``extensions`` (default: the image formats)."""
    from dfk.errors import UserError

    wanted = IMAGE_EXTENSIONS if extensions is None else extensions

    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in wanted
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.exists():
            found.append(item)
        else:
            raise UserError(f"{item} does not exist")
    if not found:
        raise UserError(f"no {what} files in {', '.join(map(str, inputs))}")
    return found

