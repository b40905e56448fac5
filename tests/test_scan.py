import shutil

import numpy as np
import pytest
from PIL import Image

from dfk.data.scan import scan
from dfk.errors import UserError


def _img(path, mode="RGB", size=(40, 30), fmt=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt, **save)
    return path


def _kaggle(root, n=3, splits=("Train", "Validation", "Test"), classes=("Fake", "Real")):
    for s in splits:
        for c in classes:
            for i in range(n):
                _img(root / s / c / f"{c}_{i}.jpg")
    return root


def test_kaggle_layout_counts_labels_and_fingerprint(tmp_path):
    root = _kaggle(tmp_path / "d")
    index = scan(root)
    assert index.layout == "kaggle"
    assert index.counts() == {s: {"real": 3, "fake": 3} for s in ("train", "validation", "test")}
    assert all(y == (1 if "Fake" in p else 0) for s in index.samples for p, y in index.samples[s])
    assert len(index.fingerprint) == 16 and scan(root).fingerprint == index.fingerprint
    _img(root / "Train" / "Real" / "extra.jpg")
    assert scan(root).fingerprint != index.fingerprint


def test_folder_names_match_case_insensitively(tmp_path):
    root = tmp_path / "d"
    for s in ("train", "VALIDATION", "Test"):
        for c in ("FAKE", "real"):
            for i in range(2):
                _img(root / s / c / f"{i}.png", fmt="PNG")
    assert scan(root).counts()["validation"] == {"real": 2, "fake": 2}


def test_flat_layout_is_split_stably_by_val_split(tmp_path):
    root = tmp_path / "flat"
    for c in ("Fake", "Real"):
        for i in range(60):
            _img(root / c / f"{i}.jpg", size=(8, 8))
    index = scan(root, val_split=0.2)
    assert index.layout == "flat"
    n = {s: sum(c.values()) for s, c in index.counts().items()}
    assert sum(n.values()) == 120 and 10 <= n["validation"] <= 40 and 10 <= n["test"] <= 40
    _img(root / "Fake" / "new.jpg", size=(8, 8))
    again = scan(root, val_split=0.2)
    for split in index.samples:
        assert set(index.paths(split)) <= set(again.paths(split))


def test_hidden_files_and_non_images_are_ignored_bad_images_listed(tmp_path):
    root = _kaggle(tmp_path / "d")
    (root / "Train" / "Fake" / ".DS_Store").write_bytes(b"junk")
    (root / "Train" / "Fake" / "notes.txt").write_text("hello")
    (root / "Train" / "Fake" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "Train" / "Real" / "empty.png").write_bytes(b"")
    (root / "Train" / ".hidden_dir").mkdir()
    index = scan(root)
    assert index.ignored_files == 1
    assert sorted(p.split("/")[-1] for p, _ in index.bad_files) == ["broken.jpg", "empty.png"]
    assert index.counts()["train"] == {"real": 3, "fake": 3}


def test_decompression_bomb_is_rejected_from_its_header(tmp_path):
    root = _kaggle(tmp_path / "d")
    bomb = root / "Train" / "Fake" / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 Mpx, a few kB on disk
    index = scan(root)
    assert [(p.split("/")[-1], "Mpx" in r) for p, r in index.bad_files] == [("bomb.png", True)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is not a directory"),
        (lambda r: r.mkdir(), "neither Train/Validation/Test nor Fake/Real"),
        (lambda r: _kaggle(r, splits=("Train", "Validation")), "has no Test folder"),
        (lambda r: _kaggle(r, classes=("Fake",)), "has no readable Real images"),
        (lambda r: (_kaggle(r), _img(r / "Train" / "Deepfakes" / "a.jpg")), "unknown class folder 'Deepfakes'"),
    ],
)
def test_unusable_layouts_fail_with_one_clear_line(tmp_path, make, message):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(UserError) as err:
        scan(root)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_class_with_only_unreadable_files_is_an_error(tmp_path):
    root = _kaggle(tmp_path / "d")
    shutil.rmtree(root / "Test" / "Real")
    (root / "Test" / "Real").mkdir()
    (root / "Test" / "Real" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="no readable Real images.*1 unreadable"):
        scan(root)
