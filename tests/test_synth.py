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
