import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from dfk.data.synth import SynthSpec, builtin_dataset, generate, mask_path
from dfk.errors import UserError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_kaggle_layout_with_masks_for_every_fake(tiny_data):
    for split in ("Train", "Validation", "Test"):
        for cls in ("Fake", "Real"):
            files = list((tiny_data / split / cls).glob("*.jpg"))
            assert len(files) == {"Train": 12, "Validation": 6, "Test": 6}[split]
            for f in files:
                assert Image.open(f).size == (64, 64)
        for fake in (tiny_data / split / "Fake").glob("*.jpg"):
            m = np.asarray(Image.open(mask_path(fake)))
            assert set(np.unique(m)) == {0, 255} and 0.03 < (m > 0).mean() < 0.5
        assert all(mask_path(r) is None for r in (tiny_data / split / "Real").glob("*.jpg"))
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    kinds = {k for item in manifest["images"] for k in item["manipulations"]}
    assert kinds == {"splice", "upsample", "colour", "double_jpeg"}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    spec = SynthSpec(train=3, validation=2, test=2, image_size=48, seed=5)
    a, b = generate(spec, tmp_path / "a"), generate(spec, tmp_path / "b")
    c = generate(SynthSpec(train=3, validation=2, test=2, image_size=48, seed=6), tmp_path / "c")
    assert _digest(a) == _digest(b) != _digest(c)


def test_builtin_is_generated_once_then_reused(monkeypatch):
    spec = SynthSpec(train=2, validation=2, test=2, image_size=32)
    first = builtin_dataset(spec)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert builtin_dataset(spec) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp


def test_refuses_non_empty_output_and_bad_sizes(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate(SynthSpec(train=2, validation=2, test=2, image_size=32), tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="at least 2"):
        generate(SynthSpec(train=1), tmp_path / "y")
    with pytest.raises(UserError, match="image size"):
        generate(SynthSpec(image_size=8), tmp_path / "z")
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def _colour_stats(root, split):
    X, y = [], []
    for label, cls in ((0, "Real"), (1, "Fake")):
        for f in sorted((root / split / cls).glob("*.jpg")):
            a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
            X.append(np.r_[a.mean((0, 1)), a.std((0, 1))])
            y.append(label)
    return np.array(X), np.array(y)


def test_not_solvable_by_global_colour_statistics(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = generate(SynthSpec(train=150, validation=2, test=100, image_size=48, seed=3), tmp_path / "d")
    Xtr, ytr = _colour_stats(root, "Train")
    Xte, yte = _colour_stats(root, "Test")
    acc = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Xtr, ytr).score(Xte, yte)
    assert acc <= 0.65


def test_builtin_set_passes_its_own_format_leakage_check(tmp_path):
    from dfk.data.leakage import check_leakage
    from dfk.data.scan import scan

    root = generate(SynthSpec(train=60, validation=10, test=10, image_size=64, seed=4), tmp_path / "d")
    reports = check_leakage(scan(root))
    assert [r.cue for r in reports if r.leaks] == []


def test_synth_options_restrict_kinds_change_photos_and_shift_the_domain(tmp_path):
    import json

    from typer.testing import CliRunner

    from dfk.cli import app
    from dfk.data.synth import DEFAULT_FORGERIES, SHIFTED_FORGERIES

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "other"
    r = CliRunner().invoke(app, ["data", "synth", str(out), "--train", "4", "--validation", "2", "--test", "2",
                                 "--image-size", "32", "--manipulations", "upsample", "--photos", str(photos), "--shifted"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["shifted"] and manifest["spec"]["photos"] == str(photos)
    assert {tuple(m["manipulations"]) for m in manifest["images"] if m["label"] == 1} == {("upsample",)}
    # The shifted domain shares no trace range with the default one.
    assert set(SHIFTED_FORGERIES.upsample_factors).isdisjoint(DEFAULT_FORGERIES.upsample_factors)
    assert SHIFTED_FORGERIES.jpeg_quality[1] < DEFAULT_FORGERIES.jpeg_quality[0]
    assert SHIFTED_FORGERIES.double_jpeg_quality[0] > DEFAULT_FORGERIES.double_jpeg_quality[1]


@pytest.mark.parametrize("args, message", [
    (["--manipulations", "splice,morph"], "unknown manipulation morph"),
    (["--photos", "/no/such/folder"], "photos folder /no/such/folder does not exist"),
])
def test_synth_with_bad_options_is_one_line_and_writes_nothing(tmp_path, args, message):
    from typer.testing import CliRunner

    from dfk.cli import app

    r = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "x"), "--train", "2", *args])
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- generator v2 stays v2
def _digest_of_images(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "manifest.json":  # the manifest gained the spec's `broad` field
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("spec, digest", [
    # Computed with the generator before the newer families, shapes and broad presets existed: users'
    # cached sets (GENERATOR_VERSION 2) must still be what the generator writes.
    (SynthSpec(train=3, validation=2, test=2, image_size=32, seed=0),
     "6c98e9a0646fede8191c4cf4d422f379b9a5821b198a4f641153a172b090288f"),
    (SynthSpec(train=3, validation=2, test=2, image_size=48, seed=2, shifted=True),
     "9f9cf6f16e86cb5021313a3d9391c1a3d7420e198e12b28135b272b07b6f82b5"),
])
def test_default_and_shifted_sets_are_byte_identical_to_version_2(tmp_path, spec, digest):
    assert _digest_of_images(generate(spec, tmp_path / "d")) == digest


def test_family_constants_partition_every_manipulation():
    from dfk.data.synth import (ALL_MANIPULATIONS, HELD_OUT_MANIPULATIONS, MANIPULATIONS, PRETRAIN_MANIPULATIONS,
                                SELF_BLENDS)

    assert MANIPULATIONS == ("splice", "upsample", "colour", "double_jpeg") == SynthSpec().manipulations
    assert set(PRETRAIN_MANIPULATIONS).isdisjoint(HELD_OUT_MANIPULATIONS)
    assert set(PRETRAIN_MANIPULATIONS) | set(HELD_OUT_MANIPULATIONS) == set(ALL_MANIPULATIONS)
    assert set(SELF_BLENDS) <= set(PRETRAIN_MANIPULATIONS) and set(MANIPULATIONS) <= set(HELD_OUT_MANIPULATIONS)


# ----------------------------------------------------------------------------- every family
def _all_kinds():
    from dfk.data.synth import ALL_MANIPULATIONS

    return ALL_MANIPULATIONS


@pytest.mark.parametrize("broad", [False, True], ids=["default", "broad"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", _all_kinds())
def test_every_family_changes_only_what_its_mask_covers(kind, size, broad):
    import cv2

    from dfk.data.synth import forge, natural_crop

    spec = SynthSpec(manipulations=(kind,), image_size=size, broad=broad)
    for seed in range(6):
        rng = np.random.default_rng([seed, size])
        img, source = natural_crop(rng, size)
        before = img.copy()
        fake, mask, kinds = forge(img, rng, spec, source)
        assert kinds == [kind] and np.array_equal(img, before)
        assert fake.shape == img.shape and np.isfinite(fake).all() and 0 <= fake.min() and fake.max() <= 255
        assert mask.shape == (size, size) and set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() >= 4
        # The feathered edge reaches a few pixels out (a feather sigma of at most 3); beyond that nothing moved.
        near = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        assert np.abs(fake - img).max(axis=-1)[~near].max(initial=0) < 2.0, kind


@pytest.mark.parametrize("shape", ["ellipse", "polygon", "blob", "rectangle"])
def test_every_region_shape_is_one_piece_inside_the_image(shape):
    import cv2

    from dfk.data.regions import BROAD_FORGERIES, region_mask

    params = dataclasses.replace(BROAD_FORGERIES, shapes=(shape,))
    rng = np.random.default_rng(7)
    for _ in range(20):
        m = region_mask(rng, 64, params)
        assert 0.004 < m.mean() < 0.6
        assert cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] == 2  # background + one piece


# ----------------------------------------------------------------------------- broad, pretrain, reals-only
def test_broad_pretraining_set_is_deterministic_and_leaks_no_format(tmp_path):
    from dfk.data.leakage import check_leakage
    from dfk.data.scan import scan
    from dfk.data.synth import PRETRAIN_MANIPULATIONS

    spec = SynthSpec(train=30, validation=2, test=2, image_size=48, seed=9, manipulations=PRETRAIN_MANIPULATIONS,
                     broad=True)
    a, b = generate(spec, tmp_path / "a"), generate(spec, tmp_path / "b")
    c = generate(dataclasses.replace(spec, seed=10), tmp_path / "c")
    assert _digest(a) == _digest(b) != _digest(c)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["spec"]["broad"] and {k for m in manifest["images"] for k in m["manipulations"]} <= set(PRETRAIN_MANIPULATIONS)
    for fake in (a / "Train" / "Fake").glob("*.jpg"):
        assert Image.open(mask_path(fake)).size == (48, 48) == Image.open(fake).size
    assert [r.cue for r in check_leakage(scan(a)) if r.leaks] == []


def test_shifted_and_broad_together_are_refused():
    with pytest.raises(UserError, match="exclude each other"):
        SynthSpec(shifted=True, broad=True).validate()


def test_pretrain_photos_read_debian_folders_as_rgb_and_name_the_missing_package(monkeypatch, tmp_path, caplog):
    from dfk.data import synth

    gnome = tmp_path / "gnome"
    gnome.mkdir()
    rgba = np.full((40, 50, 4), 200, np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(gnome / "a.png")
    Image.fromarray(np.full((40, 50), 90, np.uint8), "L").convert("LA").save(gnome / "b.png")
    Image.fromarray(np.full((40, 50, 3), 9, np.uint8)).save(gnome / "b_3840x2160.png")  # b again, larger
    (gnome / "c.svg").write_text("<svg/>")
    monkeypatch.setattr(synth, "PRETRAIN_FOLDERS", (str(gnome), str(tmp_path / "mate" / "abstract")))
    synth.source_photos.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="dfk.data.synth"):
            pretrain = synth.source_photos(synth.PRETRAIN_PHOTOS)
        builtin = synth.source_photos(synth.BUILTIN_PHOTOS)
    finally:
        synth.source_photos.cache_clear()
    assert len(pretrain) >= len(builtin) + 2 and all(p.ndim == 3 and p.shape[-1] == 3 for p in pretrain)
    assert [(p.shape, int(p[0, 0, 0])) for p in pretrain[-2:]] == [((40, 50, 3), 200), ((40, 50, 3), 90)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "apt-get install mate-backgrounds" in lines[0]
    assert not any(synth.HELD_OUT_PHOTOS.startswith(f) for f in synth.PRETRAIN_FOLDERS)


def _photo_folder(path, n=3):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, (12, 16, 3)).astype(np.uint8)
        Image.fromarray(base).resize((160, 120), Image.BICUBIC).save(path / f"p{i}.jpg")
    return path


def test_from_reals_writes_a_complete_set_of_self_blends(tmp_path):
    from typer.testing import CliRunner

    from dfk.cli import app
    from dfk.data.synth import SELF_BLENDS

    reals = _photo_folder(tmp_path / "mine")
    out = tmp_path / "set"
    r = CliRunner().invoke(app, ["data", "synth", str(out), "--from-reals", str(reals), "--train", "4",
                                 "--validation", "2", "--test", "2", "--image-size", "32"])
    assert r.exit_code == 0, r.output
    for split, n in (("Train", 4), ("Validation", 2), ("Test", 2)):
        for cls in ("Fake", "Real"):
            assert len(list((out / split / cls).glob("*.jpg"))) == n
        assert len(list((out / "masks" / split).glob("*.png"))) == n
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["photos"] == str(reals) and manifest["spec"]["broad"]
    assert {k for m in manifest["images"] for k in m["manipulations"]} <= set(SELF_BLENDS)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such folder"),
    (lambda p: _photo_folder(p, n=1), "1 readable photographs"),
])
def test_from_reals_with_a_bad_folder_is_one_line_and_writes_nothing(tmp_path, make, message):
    from typer.testing import CliRunner

    from dfk.cli import app

    reals = make(tmp_path / "mine")
    r = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "x"), "--from-reals", str(reals), "--train", "2"])
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
