"""Hostile and odd images through every path that decodes: the decoder itself, scan, the training
input pipeline, predict, Grad-CAM and the served model's request parser. Nothing crashes: an image
becomes pixels or a BadImage with a reason; bombs are refused from their header within a memory bound."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from bench.hostile import ACCEPTED, corpus, decode_peaks
from dfk.data.decode import (ALLOWED_FORMATS, MAX_DECODED_BYTES, BadImage, ImageTooLarge, decode_for_display,
                             decode_image)
from dfk.serving.detector import DeepfakeDetector, InvalidInput, to_bytes
from dfk.settings import SETTINGS

CORPUS = corpus()
REFUSED = sorted(set(CORPUS) - ACCEPTED)
BOMBS = ["webp_bomb", "png_bomb_rgba", "gif_huge_frame", "tiff_huge_strip", "png16_bomb", "png_over_pixel_limit"]


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_odd_but_valid_images_become_rgb_at_size_and_for_display(name):
    out = decode_image(CORPUS[name], 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    shown = decode_for_display(CORPUS[name], 64)
    assert shown.ndim == 3 and shown.shape[2] == 3 and max(shown.shape[:2]) <= 64


@pytest.mark.parametrize("name", REFUSED)
def test_hostile_files_are_a_bad_image_with_a_reason(name):
    with pytest.raises(BadImage) as info:
        decode_image(CORPUS[name], 32)
    assert str(info.value) and "Traceback" not in str(info.value)
    if name in BOMBS:
        assert isinstance(info.value, ImageTooLarge) and "decompression bomb" in str(info.value)


@pytest.mark.parametrize("name", ["fits", "ppm", "tga", "ico", "pcx"])
def test_formats_outside_the_allowlist_are_refused_though_pillow_reads_them(name):
    assert Image.open(io.BytesIO(CORPUS[name])).format not in ALLOWED_FORMATS  # Pillow alone would decode it
    with pytest.raises(BadImage, match="not an image dfk reads"):
        decode_image(CORPUS[name], 32)


def test_bombs_and_budget_sized_images_stay_within_the_memory_bound_per_image():
    """Each file decoded in a fresh process: its peak memory (VmHWM) above the loaded baseline."""
    names = BOMBS + ["rgba_png_at_budget", "webp_at_budget"]
    peaks = decode_peaks(256, names)
    for name in BOMBS:
        mib, _, outcome = peaks[name]
        assert outcome.startswith("refused") and mib < 16, (name, peaks[name])  # refused from the header
    for name in ("rgba_png_at_budget", "webp_at_budget"):
        mib, _, outcome = peaks[name]
        assert outcome == "decoded" and mib < 5 * MAX_DECODED_BYTES / 2**20, (name, peaks[name])


@pytest.mark.parametrize("value", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_would(value):
    arr = np.random.default_rng(value).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = value
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    got = decode_image(buf.getvalue())
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert decode_for_display(buf.getvalue(), 10).shape[:2] == ((10, 6) if value >= 5 else (6, 10))


def test_the_exif_rotated_jpeg_is_upright():
    out = decode_image(CORPUS["exif_rotated_jpeg"], 20)  # red left half, rotated 90 degrees clockwise: red on top
    assert out[:8, :, 0].mean() > 200 and out[-8:, :, 2].mean() > 200


def _write_corpus(root):
    """A Kaggle-layout folder: every corpus file in Train/Fake (named .jpg whatever it holds, as files
    arrive), and three good JPEGs in every split and class."""
    rgb = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    for split in ("Train", "Validation", "Test"):
        for cls in ("Fake", "Real"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.roll(rgb, i * 7, axis=1)).save(d / f"good{i}.jpg")
    for name, data in CORPUS.items():
        (root / "Train" / "Fake" / f"{name}.jpg").write_bytes(data)
    return root


def _stems(paths) -> set[str]:
    return {str(p).rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in paths}


def test_scan_lists_refused_files_with_their_reason_and_indexes_the_rest(tmp_path):
    from dfk.data.scan import scan

    index = scan(_write_corpus(tmp_path / "data"))
    bad = _stems(p for p, _ in index.bad_files)
    kept = _stems(p for split in index.samples for p, _ in index.samples[split])
    # The scan reads headers only: everything refused there is refused by the decoder too, and
    # every bomb, foreign format and empty file is caught before training starts.
    assert bad <= set(REFUSED) and set(BOMBS) | {"fits", "ppm", "tga", "ico", "pcx", "zero_bytes", "random_bytes"} <= bad
    assert kept == set(CORPUS) - bad | {"good0", "good1", "good2"}
    assert all(reason for _, reason in index.bad_files)


def test_training_pipeline_skips_what_it_cannot_decode_with_a_reason(tmp_path):
    from dfk.data.pipeline import DecodeFailures, make_dataset

    paths = sorted(str(p) for p in _write_corpus(tmp_path / "data").rglob("*") if p.is_file())
    failures = DecodeFailures()
    ds = make_dataset(paths, [0] * len(paths), 32, 8, failures)
    n = sum(int(x.shape[0]) for x, _ in ds)  # the stream runs to its end
    assert _stems(p for p, _ in failures.items()) == set(REFUSED) and all(why for _, why in failures.items())
    assert n == len(paths) - len(failures)  # failed files are dropped from the stream, never raised


def test_predict_and_gradcam_score_the_readable_files_and_skip_the_rest(trained_model, tmp_path):
    from dfk.explain.gradcam import explain_files
    from dfk.evaluation.scoring import predict_files
    from dfk.serving.detector import load_detector

    files = sorted(p for p in _write_corpus(tmp_path / "data").rglob("*") if p.is_file())
    detector = load_detector(str(trained_model))
    skipped = []
    rows = predict_files(detector, files, 8, on_skip=lambda f, why: skipped.append((f.stem, why)))
    assert {s for s, _ in skipped} == set(REFUSED) and all(why for _, why in skipped)
    assert len(rows) + len(skipped) == len(files) and all(0 <= p <= 1 for _, p, _ in rows)
    skipped.clear()
    r = explain_files(detector, files, tmp_path / "cam", batch_size=8, on_skip=lambda f, why: skipped.append(f.stem))
    assert r.written == len(rows) and set(skipped) == set(REFUSED)


# ----------------------------------------------------------------------------- property-based
_VALID = [CORPUS[n] for n in sorted(ACCEPTED) if "budget" not in n]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from(_VALID), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)).map(
        lambda t: t[0][:t[1] % len(t[0])] + t[2] + t[0][t[1] % len(t[0]) + len(t[2]):]),  # overwrite bytes
    st.tuples(st.sampled_from(_VALID), st.integers(1, 10_000)).map(lambda t: t[0][: t[1] % len(t[0])]),  # truncate
), st.sampled_from([None, 16]))
def test_any_bytes_become_an_rgb_array_or_a_bad_image(data, size):
    try:
        out = decode_image(data, size)
    except BadImage as exc:
        assert str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    if size is not None:
        assert out.shape == (size, size, 3)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64), st.none(), st.integers(), st.floats(),
                 st.lists(st.integers(), max_size=3)))
def test_to_bytes_returns_bytes_or_invalid_input(value):
    try:
        assert isinstance(to_bytes(value, 0), bytes)
    except InvalidInput as exc:
        assert "row 0" in str(exc)


class _Zeros:
    """Stands in for the Keras model: the request parser is under test, not the network."""

    def __call__(self, x, training=False):
        assert x.dtype == np.float32 and x.shape[1:] == (16, 16, 3)
        return np.full((len(x), 1), 0.25, np.float32)


def _detector() -> DeepfakeDetector:
    d = DeepfakeDetector()
    d.model, d.arch, d.image_size, d.threshold, d.temperature, d.batch_size = _Zeros(), "t", 16, 0.5, 1.0, 4
    return d


_CELL = st.one_of(st.sampled_from(_VALID), st.binary(max_size=32), st.text(max_size=16), st.none(), st.integers())


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.lists(_CELL, max_size=6).map(lambda rows: pd.DataFrame({"image": pd.Series(rows, dtype=object)})),
    st.dictionaries(st.sampled_from(["image", "picture"]), st.one_of(_CELL, st.lists(_CELL, max_size=4)), max_size=2),
))
def test_predict_answers_a_frame_or_a_400_for_any_input(model_input):
    from mlflow.exceptions import MlflowException

    try:
        out = _detector().predict(None, model_input)
    except MlflowException as exc:
        assert exc.get_http_status_code() == 400 and exc.message
        return
    assert list(out.columns) == ["probability_fake", "label"] and len(out) == len(pd.DataFrame(model_input))


def test_predict_refuses_more_rows_than_the_setting_before_decoding_any():
    from mlflow.exceptions import MlflowException

    n = SETTINGS.max_request_rows
    d = _detector()
    assert len(d.predict(None, pd.DataFrame({"image": [_VALID[0]] * n}))) == n
    with pytest.raises(MlflowException, match=f"{n + 1} images in one request; the limit is {n}") as info:
        d.predict(None, pd.DataFrame({"image": [b"not decoded"] * (n + 1)}))
    assert info.value.get_http_status_code() == 400
