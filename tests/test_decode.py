import io

import numpy as np
import pytest
from PIL import Image

from dfk.data.decode import BadImage, decode_image


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "data",
    [
        _encode(RGB, "JPEG"),
        _encode(RGB, "PNG"),
        _encode(RGB, "BMP"),
        _encode(RGB, "WEBP"),
        _encode(RGB.convert("L"), "PNG"),
        _encode(RGB.convert("RGBA"), "PNG"),
        _encode(RGB.convert("P"), "PNG"),
        _encode(RGB.convert("P"), "GIF"),
        _encode(RGB.convert("CMYK"), "JPEG"),
        _encode(Image.fromarray((np.arange(1500).reshape(30, 50) * 40).astype(np.uint16)), "PNG"),
        _encode(RGB, "TIFF"),
    ],
    ids=["jpeg", "png", "bmp", "webp", "gray", "rgba", "palette", "gif", "cmyk", "png16", "tiff"],
)
def test_every_format_and_mode_becomes_8bit_rgb_at_size(data):
    out = decode_image(data, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.std() > 0


def test_gif_first_frame_is_used():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), 16)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_16bit_keeps_its_dynamic_range():
    im = Image.fromarray(np.full((10, 10), 65535, np.uint16))
    assert decode_image(_encode(im, "PNG"), 10).min() == 255


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, world", "not an image"),
        (_encode(RGB, "JPEG")[:-500], "cannot decode"),
        (_encode(Image.new("1", (8000, 7000)), "PNG"), "Mpx limit"),
    ],
    ids=["empty", "text", "truncated", "bomb"],
)
def test_bad_bytes_raise_bad_image_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(data, 32)
