"""TensorFlow's own decoders in the input pipeline: the same pixels as the Pillow decoder, and every
safety check kept (files routed by what the scan read; files changed or broken since go to Pillow)."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfk.data import pipeline
from dfk.data.decode import read_image
from dfk.data.pipeline import PILLOW, DecodeFailures, make_dataset, route
from dfk.data.scan import ImageInfo, probe, scan


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus a little noise: compresses like a photograph, shows resampling errors."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(9 * x * y + 1)], -1)
    return np.clip((base + 1) * 110 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _png_with_chunk_after_pixels(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """``data`` (a PNG) with one more chunk between its last IDAT and IEND."""
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:-12] + chunk + data[-12:]


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _odd_files(d: Path) -> dict[str, Path]:
    """Every kind of file the pipeline meets; the name says what it is."""
    import cv2

    d.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_photo(96, 72))
    files: dict[str, bytes] = {}

    def save(name, im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        files[name] = buf.getvalue()

    save("rgb.jpg", rgb, "JPEG", quality=90)
    save("big.jpg", Image.fromarray(_photo(700, 520, 1)), "JPEG", quality=92)  # reduced-size decoding
    save("wide.jpg", Image.fromarray(_photo(300, 40, 2)), "JPEG")  # shrinks one side, grows the other
    save("small.jpg", Image.fromarray(_photo(20, 16, 3)), "JPEG")  # grows
    save("gray.jpg", rgb.convert("L"), "JPEG")
    save("progressive.jpg", rgb, "JPEG", progressive=True, quality=85)
    save("subsampling444.jpg", rgb, "JPEG", subsampling=0, quality=95)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("exif_rotated.jpg", rgb, "JPEG", exif=_exif(6))
    save("exif_upright.jpg", rgb, "JPEG", exif=_exif(1))
    save("rgb.png", rgb, "PNG")
    save("gray.png", rgb.convert("L"), "PNG")
    save("interlaced.png", rgb, "PNG")  # (Pillow writes no Adam7; the bit-depth test covers the header)
    save("rgba.png", rgb.convert("RGBA").transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    save("palette.png", rgb.convert("P"), "PNG")
    save("palette_transparent.png", rgb.convert("P"), "PNG", transparency=3)
    save("gray_transparent.png", rgb.convert("L"), "PNG", transparency=7)
    save("gray16.png", Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)), "PNG")
    save("exif_rotated_before_pixels.png", rgb, "PNG", exif=_exif(8))
    save("bmp.bmp", rgb, "BMP")
    save("gif.gif", rgb.convert("P"), "GIF")
    save("webp.webp", rgb, "WEBP", quality=90)
    ok, rgb16 = cv2.imencode(".png", (_photo(96, 72, 4).astype(np.uint16) * 257 + 100)[..., ::-1])
    files["rgb16.png"] = rgb16.tobytes()
    files["exif_rotated_after_pixels.png"] = _png_with_chunk_after_pixels(files["rgb.png"], b"eXIf", _exif(3))
    paths = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        paths[name] = d / name
    return paths


#: What goes to TensorFlow's decoders at any size; everything else but "wide.jpg" goes to Pillow.
NATIVE = {"rgb.jpg", "big.jpg", "small.jpg", "gray.jpg", "progressive.jpg", "subsampling444.jpg", "exif_upright.jpg",
          "rgb.png", "gray.png", "interlaced.png", "gray_transparent.png"}
#: Routed to TensorFlow by the scan's index, sent back to Pillow by the check of the bytes read.
CAUGHT_WHEN_READ = {"rgb16.png", "exif_rotated_after_pixels.png"}


def _decode(paths, size, info, monkeypatch) -> tuple[np.ndarray, list[str], DecodeFailures]:
    """Images (in file order) and the files the Pillow decoder was called for."""
    called = []
    monkeypatch.setattr(pipeline, "read_image", lambda p, s: (called.append(Path(p).name), read_image(p, s))[1])
    failures = DecodeFailures()
    batches = list(make_dataset([str(p) for p in paths], [0] * len(paths), size, 8, failures, info=info,
                                with_paths=True))
    images = np.concatenate([x.numpy() for x, _, _ in batches]) if batches else np.zeros((0, size, size, 3))
    assert [s.decode() for _, _, ps in batches for s in ps.numpy()] == [str(p) for p in paths
                                                                         if str(p) not in dict(failures.items())]
    return images, called, failures


@pytest.mark.parametrize("size", [32, 64, 72, 128])
def test_both_decoders_give_the_same_pixels_on_odd_files(tmp_path, monkeypatch, size):
    files = _odd_files(tmp_path / "odd")
    paths = sorted(files.values())
    info = {str(p): probe(str(p)) for p in paths}
    native, pillow_called, failures = _decode(paths, size, info, monkeypatch)
    pillow, all_called, _ = _decode(paths, size, None, monkeypatch)
    assert not failures.items()
    assert sorted(all_called) == sorted(p.name for p in paths)  # without the index, Pillow decodes everything
    # at 64 px and more "wide" (300x40) would shrink one side and grow the other, which OpenCV's
    # area interpolation does its own way: Pillow's decoder then
    native_here = NATIVE | ({"wide.jpg"} if size <= 40 else set())
    assert sorted(pillow_called) == sorted(p.name for p in paths if p.name not in native_here)
    assert native.shape == pillow.shape == (len(paths), size, size, 3)
    diff = np.abs(native.astype(int) - pillow.astype(int)).reshape(len(paths), -1).max(axis=1)
    assert {p.name: int(d) for p, d in zip(paths, diff) if d > 1} == {}


def test_the_built_in_set_decodes_to_the_same_pixels_through_tensorflow(tiny_data, monkeypatch):
    index = scan(tiny_data)
    paths = [Path(p) for p in index.paths("test")]
    for size in (32, 48, 64, 96):
        assert {route(index.info[str(p)], size)[0] for p in paths} == {pipeline.JPEG}
        native, called, _ = _decode(paths, size, index.info, monkeypatch)
        pillow, _, _ = _decode(paths, size, None, monkeypatch)
        assert called == []
        assert np.abs(native.astype(int) - pillow.astype(int)).max() <= 1, size


def test_routes_follow_what_the_scan_read(tmp_path):
    files = _odd_files(tmp_path / "odd")
    routes = {name: route(probe(str(p)), 64) for name, p in files.items()}
    # 700x520 decoded at a reduced size as Pillow's draft does: 1/8 (88x65) for 64 px, 1/4 (175x130) for 128 px
    assert routes["big.jpg"][:3] == (pipeline.JPEG, pipeline._JPEG_SCALES.index(8), pipeline._AREA)
    assert route(probe(str(files["big.jpg"])), 128)[1] == pipeline._JPEG_SCALES.index(4)
    assert routes["rgb.jpg"][:3] == (pipeline.JPEG, pipeline._JPEG_SCALES.index(1), pipeline._AREA)
    assert routes["small.jpg"][:3] == (pipeline.JPEG, pipeline._JPEG_SCALES.index(1), pipeline._LINEAR)
    assert routes["rgb.png"][0] == pipeline.PNG
    # a PNG's bit depth and a late EXIF chunk are found in the file when it is read, not by the scan
    assert {n for n, r in routes.items() if r[0] == PILLOW} == set(files) - NATIVE - CAUGHT_WHEN_READ
    assert route(None, 64)[0] == PILLOW
    assert route(ImageInfo("PNG", 3000, 3000, 1000, 0, "RGB", 1), 64)[0] == PILLOW  # over NATIVE_MAX_BYTES decoded: Pillow, within the shared decode budget


def _jpeg_dims_offset(data: bytes) -> int:
    """Offset of the height field of a baseline JPEG's SOF0 segment."""
    return data.index(b"\xff\xc0") + 5


def test_files_changed_or_broken_after_the_scan_go_to_pillow_and_are_checked_again(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    names = ["ok_0.jpg", "bomb.jpg", "truncated.jpg", "replaced.jpg", "corrupt.jpg", "ok_1.jpg", "png_now_16bit.png",
             "ok_2.jpg"]
    for i, name in enumerate(names):
        im = Image.fromarray(_photo(64, 48, i))
        im.save(d / name, "PNG" if name.endswith(".png") else "JPEG", quality=90)
    paths = [d / n for n in names]
    info = {str(p): probe(str(p)) for p in paths}
    # after the scan:
    bomb = bytearray((d / "bomb.jpg").read_bytes())  # same length, header now says 60000 x 60000 pixels
    bomb[_jpeg_dims_offset(bytes(bomb)):_jpeg_dims_offset(bytes(bomb)) + 4] = struct.pack(">HH", 60000, 60000)
    (d / "bomb.jpg").write_bytes(bytes(bomb))
    (d / "truncated.jpg").write_bytes((d / "truncated.jpg").read_bytes()[:-200])
    Image.fromarray(_photo(128, 96, 9)).save(d / "replaced.jpg", "JPEG")  # another, larger picture
    data = bytearray((d / "corrupt.jpg").read_bytes())  # same length: a marker no decoder knows inside the pixels
    sos = bytes(data).index(b"\xff\xda")
    data[sos + 40:sos + 42] = b"\xff\xc5"
    (d / "corrupt.jpg").write_bytes(bytes(data))
    import cv2

    ok, png16 = cv2.imencode(".png", _photo(64, 48, 6).astype(np.uint16) * 257)
    (d / "png_now_16bit.png").write_bytes(png16.tobytes())

    images, called, failures = _decode(paths, 32, info, monkeypatch)
    failed = {Path(p).name: why for p, why in failures.items()}
    assert set(failed) >= {"bomb.jpg", "truncated.jpg"}
    assert "Mpx limit" in failed["bomb.jpg"] or "budget" in failed["bomb.jpg"]
    assert set(called) == {"bomb.jpg", "truncated.jpg", "replaced.jpg", "corrupt.jpg", "png_now_16bit.png"}
    assert set(failed) <= {"bomb.jpg", "truncated.jpg", "corrupt.jpg"}
    assert len(images) == len(names) - len(failed)
    # the files that decoded are those Pillow decodes, in file order
    expected, _, _ = _decode([p for p in paths if p.name not in failed], 32, None, monkeypatch)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("augment", ["flip", "flip,rotation,zoom,brightness,jpeg,blur"])
def test_a_training_stream_routes_too_and_keeps_every_image(tiny_data, monkeypatch, augment):
    from dfk.config import TrainConfig

    monkeypatch.setattr(pipeline, "CACHE_BYTES", 0)  # streamed, not kept in memory
    index = scan(tiny_data)
    paths, labels = index.paths("train"), index.labels("train")
    called = []
    monkeypatch.setattr(pipeline, "read_image", lambda p, s: (called.append(p), read_image(p, s))[1])
    ds = make_dataset(paths, labels, 32, 5, DecodeFailures(), training=True, cfg=TrainConfig(augment=augment),
                      seed=2, with_paths=True, info=index.info)
    batches = [(x.numpy(), ys.numpy(), ps.numpy()) for x, ys, ps in ds]
    seen = [(s.decode(), float(y)) for _, ys, ps in batches for s, y in zip(ps, ys)]
    assert sorted(seen) == sorted(zip(paths, map(float, labels))) and called == []
    x = np.concatenate([b[0] for b in batches])
    assert x.dtype == np.float32 and np.isfinite(x).all() and 0 <= x.min() and x.max() <= 255
