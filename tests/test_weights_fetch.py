"""`dfk weights fetch` offline and with a warm cache, and the two meanings of weights=PATH named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfk.cli import app
from dfk.errors import UserError
from dfk.models import create_model, get_spec, list_models
from dfk.models import weights as w

runner = CliRunner()
PRETRAINED = [a for a in list_models() if get_spec(a).pretrained]


@pytest.fixture()
def keras_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def test_each_transfer_model_names_its_imagenet_file_and_the_others_none():
    files = {a: w.imagenet_file(a) for a in list_models()}
    assert all(files[a].endswith(".h5") for a in PRETRAINED) and len({files[a] for a in PRETRAINED}) == len(PRETRAINED)
    assert all(files[a] is None for a in list_models() if a not in PRETRAINED)


def test_offline_each_architecture_fails_with_one_line(keras_home, monkeypatch):
    monkeypatch.setattr(w, "_can_download", lambda timeout=3.0: False)
    r = runner.invoke(app, ["weights", "fetch", "resnet", "convnext"])
    assert r.exit_code == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 2
    for arch, line in zip(("resnet", "convnext"), lines):
        path = keras_home / "models" / w.imagenet_file(arch)
        assert line.startswith(f"dfk: error: {arch}: cannot download ") and line.endswith(f"copy the file to {path}")


def test_a_cached_file_is_reported_where_it_is_and_not_fetched_again(keras_home, monkeypatch):
    def no_network(timeout=3.0):
        raise AssertionError("a cached file needs no network")

    monkeypatch.setattr(w, "_can_download", no_network)
    cached = keras_home / "models" / w.imagenet_file("efficientnet")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0" * 1024)
    r = runner.invoke(app, ["weights", "fetch", "efficientnet"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"efficientnet: {cached} (already cached, 0.0 MiB)\n"


@pytest.mark.parametrize("args, message", [
    (["cnn"], "dfk: error: cnn has no ImageNet weights (it trains from scratch); those that have: "),
    (["resnet", "nope"], "dfk: error: unknown architecture 'nope'; valid: "),
])
def test_architectures_without_imagenet_weights_are_refused(keras_home, args, message):
    r = runner.invoke(app, ["weights", "fetch", *args])
    assert r.exit_code == 2 and r.stderr.startswith(message) and len(r.stderr.splitlines()) == 1


def test_weights_values_are_named_by_what_they_hold():
    assert w.split_weights("auto") == ("auto", "")
    assert w.split_weights("backbone:/w/b0.h5") == ("backbone", "/w/b0.h5")
    assert w.split_weights("model:ckpt.weights.h5") == ("model", "ckpt.weights.h5")
    assert w.split_weights("/w/old.weights.h5") == ("path", "/w/old.weights.h5")  # a bare path, as before


def test_whole_model_weights_load_as_model_path_or_a_bare_path(tmp_path):
    model, _ = create_model("cnn", 32, "none")
    saved = tmp_path / "cnn.weights.h5"
    model.save_weights(saved)
    for value in (f"model:{saved}", str(saved)):
        assert create_model("cnn", 32, value)[1] == str(saved)
    with pytest.raises(UserError, match="cnn has no pretrained backbone .* weights=model:PATH"):
        create_model("cnn", 32, f"backbone:{saved}")
    with pytest.raises(UserError, match="does not exist"):
        create_model("cnn", 32, f"model:{tmp_path / 'missing.weights.h5'}")


def test_backbone_weights_load_as_backbone_path_and_model_path_is_refused(tmp_path):
    import keras

    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    saved = tmp_path / "b0.weights.h5"
    backbone.save_weights(saved)
    assert create_model("efficientnet", 32, f"backbone:{saved}")[1] == str(saved)
    with pytest.raises(UserError, match="efficientnet starts from a backbone weights file"):
        create_model("efficientnet", 32, f"model:{saved}")
