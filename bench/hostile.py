"""Hostile and odd image files, built in memory, for the decoder's tests and its benchmark.

``corpus()`` returns name -> bytes: decompression bombs under the pixel limit (a 2 KB WebP and a
200 KB PNG that each decode to ~200 MB), formats outside the allowlist, truncated and empty
files, and the odd-but-valid images a user does send (1x1, 16-bit, CMYK, palette, EXIF-rotated,
animated, MPO). ``ACCEPTED`` names those the decoder must turn into pixels; the rest must be
refused with :class:`dfk.data.decode.BadImage`. Built once per process (a few seconds).

    .venv/bin/python -m bench.hostile          # per file: decode peak memory (fresh process) and time
"""

from __future__ import annotations

import functools
import io

import numpy as np

#: Side of the bombs: 7000 x 7000 = 49 Mpx, just under the 50 Mpx pixel limit (so only a memory
#: budget can refuse them); the issue's measured WebP and PNG are of this kind.
BOMB_SIDE = 7000

#: Files the decoder must turn into pixels; every other corpus entry must be refused.
ACCEPTED = frozenset({"rgba_png_at_budget", "webp_at_budget", "one_pixel", "png16", "cmyk_jpeg", "palette_png", "palette_transparent_gif", "exif_rotated_jpeg",
                      "animated_gif", "animated_webp", "mpo", "gray_tiff", "rgba_png_small"})


def _save(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _fits(side: int = 64) -> bytes:
    """A minimal FITS file (astronomy; Pillow reads it, dfk must not): 2880-byte header cards."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             f"NAXIS1  = {side:20d}", f"NAXIS2  = {side:20d}", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    data = bytes(range(256)) * (side * side // 256 + 1)
    return header + data[: side * side].ljust(2880 * ((side * side + 2879) // 2880), b"\0")


def _gif_huge_frame() -> bytes:
    """A GIF whose logical screen is 16x16 but whose first frame claims 7000x7000 (Pillow grows the image)."""
    from PIL import Image

    big = _save(Image.new("P", (BOMB_SIDE, BOMB_SIDE)), "GIF")
    return big[:6] + (16).to_bytes(2, "little") + (16).to_bytes(2, "little") + big[10:]  # logical screen 16x16


def _exif_rotated() -> bytes:
    """A 40x20 JPEG, left half red, whose EXIF says "rotate 90 degrees clockwise to view" (orientation 6)."""
    from PIL import Image

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(arr), "JPEG", exif=exif, quality=95)


@functools.lru_cache(maxsize=1)
def corpus() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    side = BOMB_SIDE
    flat_rgba = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    files = {
        # Bombs under the pixel limit: tiny files, ~200 MB of pixels each.
        "webp_bomb": _save(flat_rgba, "WEBP", lossless=True),
        "png_bomb_rgba": _save(flat_rgba, "PNG", optimize=False, compress_level=9),
        "gif_huge_frame": _gif_huge_frame(),
        "tiff_huge_strip": _save(Image.new("RGB", (side, side)), "TIFF", compression="tiff_deflate"),
        "png16_bomb": _save(Image.new("I;16", (side, side)), "PNG", compress_level=9),
        # The largest that fit the decode budget (4096 x 4096 RGBA = 64 MiB): accepted, at their full cost.
        "rgba_png_at_budget": _save(Image.new("RGBA", (4096, 4096), (0, 0, 0, 0)), "PNG", compress_level=9),
        "webp_at_budget": _save(Image.new("RGBA", (4096, 4096), (0, 0, 0, 0)), "WEBP", lossless=True),
        # Over the pixel limit (Pillow's own guard and ours).
        "png_over_pixel_limit": _save(Image.new("1", (12000, 12000)), "PNG"),
        # Formats outside the allowlist (Pillow reads them all).
        "fits": _fits(),
        "ppm": _save(rgb, "PPM"),
        "tga": _save(rgb, "TGA"),
        "ico": _save(rgb, "ICO"),
        "pcx": _save(rgb, "PCX"),
        # Broken files.
        "zero_bytes": b"",
        "random_bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated_jpeg": _save(rgb, "JPEG")[:300],
        "truncated_png": _save(rgb, "PNG")[:200],
        "header_only_png": _save(rgb, "PNG")[:33],
        # Odd but valid.
        "one_pixel": _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "png16": _save(Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)), "PNG"),
        "cmyk_jpeg": _save(rgb.convert("CMYK"), "JPEG"),
        "palette_png": _save(rgb.convert("P"), "PNG"),
        "palette_transparent_gif": _save(rgb.convert("P"), "GIF", transparency=0),
        "exif_rotated_jpeg": _exif_rotated(),
        "animated_gif": _save(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.rotate(90).convert("P")] * 3),
        "animated_webp": _save(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)] * 3),
        "mpo": _save(rgb, "MPO", save_all=True, append_images=[rgb.rotate(90)]),
        "gray_tiff": _save(rgb.convert("L"), "TIFF"),
        "rgba_png_small": _save(rgb.convert("RGBA"), "PNG"),
    }
    return files


def _peak_child(path: str, size: int | None) -> None:  # runs in a fresh process: python -m bench.hostile --one PATH
    import time

    from dfk.data.decode import BadImage, decode_image

    data = open(path, "rb").read()
    base = _hwm_kib()
    t = time.perf_counter()
    try:
        decode_image(data, size)
        outcome = "decoded"
    except BadImage as exc:
        outcome = f"refused: {exc}"
    print(f"{(_hwm_kib() - base) / 1024:.1f}\t{time.perf_counter() - t:.3f}\t{outcome}")


def _hwm_kib(pid: int | str = "self") -> int:
    """Peak resident memory (VmHWM) of a process in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def decode_peaks(size: int | None = 256, names=None) -> dict[str, tuple[float, float, str]]:
    """name -> (peak MiB above the process's baseline, seconds, outcome), each file in a fresh process."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in corpus().items():
            if names is not None and name not in names:
                continue
            path = Path(tmp) / name
            path.write_bytes(data)
            r = subprocess.run([sys.executable, "-m", "bench.hostile", "--one", str(path), "--size", str(size or 0)],
                               capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"nan\tnan\tcrashed: {r.stderr[-200:]}"
            mib, sec, outcome = line.split("\t", 2)
            out[name] = (float(mib), float(sec), outcome)
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--one")
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    if a.one:
        # Import what decoding needs first, so the baseline is the loaded process, not the decode.
        import cv2  # noqa: F401
        from PIL import Image  # noqa: F401

        import dfk.data.decode  # noqa: F401

        _peak_child(a.one, a.size or None)
    else:
        for name, (mib, sec, outcome) in decode_peaks(a.size or None).items():
            print(f"{name:26s} {mib:8.1f} MiB {sec:7.3f} s  {outcome[:90]}")
