"""dfk's own pre-trained forensic weights: offline, checked by their digest, fine-tuned in two phases,
and the pipeline that writes them."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from dfk.cli import app
from dfk.errors import UserError
from dfk.models import create_model, list_models
from dfk.models import weights as w

runner = CliRunner()


def ship(folder: Path, arch: str = "srm", size: int = 32, seed: int = 5) -> tuple[Path, str]:
    """A folder laid out as dfk/models/pretrained: ``arch``'s whole-model weights and a manifest."""
    import keras

    keras.utils.set_random_seed(seed)
    model, _ = create_model(arch, size, weights="none")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{arch}.weights.h5"
    model.save_weights(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    listed = json.loads((folder / w.MANIFEST).read_text()) if (folder / w.MANIFEST).exists() else {}
    listed[arch] = {"file": path.name, "sha256": digest, "bytes": path.stat().st_size, "image_size": size}
    (folder / w.MANIFEST).write_text(json.dumps(listed))
    return path, digest


@pytest.fixture()
def shipped(tmp_path, monkeypatch) -> tuple[Path, str]:
    path, digest = ship(tmp_path / "pretrained")
    monkeypatch.setenv(w.PRETRAINED_DIR_ENV, str(path.parent))
    return path, digest


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_the_packaged_manifest_is_valid_and_its_files_are_package_data():
    import tomllib

    listed = w.manifest(w.PRETRAINED_DIR)
    assert set(listed) <= set(list_models())
    for arch, entry in listed.items():  # every file dfk ships passes its own check
        assert w.shipped_weights(arch) == w.PRETRAINED_DIR / entry["file"]
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["dfk.models"]
    assert "pretrained/manifest.json" in patterns and "pretrained/*.weights.h5" in patterns


def test_dfk_weights_load_offline_and_the_tag_names_their_digest(shipped, monkeypatch):
    path, digest = shipped

    def no_network(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    reference, _ = create_model("srm", 32, weights=f"model:{path}")
    for weights in ("dfk", "auto"):
        model, used = create_model("srm", 32, weights=weights)
        assert used == f"dfk:{digest[:12]}" and _same(model, reference)
    _, used = create_model("srm", 32, weights="none")
    assert used == "random"


def test_weights_trained_at_32px_load_into_a_64px_model(shipped):
    small, _ = create_model("srm", 32, weights="dfk")
    big, used = create_model("srm", 64, weights="dfk")
    assert used.startswith("dfk:") and _same(big, small)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    assert np.all(np.isfinite(np.asarray(big(x))))


def test_another_head_takes_the_trunk_and_starts_its_head_afresh(shipped):
    reference, _ = create_model("srm", 32, weights="dfk")
    model, used = create_model("srm", 32, weights="dfk", dense_units=16)
    assert used.startswith("dfk:") and model.get_layer("head_dense").units == 16
    assert _same(model.get_layer("conv4"), reference.get_layer("conv4"))


def test_dfk_weights_for_an_architecture_without_them_is_one_line(shipped):
    with pytest.raises(UserError) as err:
        create_model("cnn", 32, weights="dfk")
    assert "no pre-trained weights for cnn" in str(err.value) and "srm" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    r = runner.invoke(app, ["train", "--arch", "cnn", "-P", "weights=dfk"])  # refused before any data is read
    assert r.exit_code == 2 and r.stderr.startswith("dfk: error: dfk ships no pre-trained weights for cnn")
    assert len(r.stderr.strip().splitlines()) == 1
    _, used = create_model("npr", 32, weights="auto")  # auto without shipped weights: random, as before
    assert used == "random"


def test_an_install_without_weights_falls_back_to_random_and_refuses_dfk(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / w.MANIFEST).write_text("{}")
    monkeypatch.setenv(w.PRETRAINED_DIR_ENV, str(tmp_path / "empty"))
    assert create_model("srm", 32, weights="auto")[1] == "random"
    with pytest.raises(UserError, match="this install has none yet"):
        create_model("srm", 32, weights="dfk")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_shipped_weights_fail_dfk_train_with_one_line(shipped, tiny_data, tmp_path, monkeypatch, damage):
    path, _ = shipped
    copy = tmp_path / "copy"
    shutil.copytree(path.parent, copy)
    if damage == "corrupt":
        with open(copy / path.name, "r+b") as f:
            f.seek(100)
            f.write(b"\0\1\2\3")
    else:
        (copy / path.name).unlink()
    monkeypatch.setenv(w.PRETRAINED_DIR_ENV, str(copy))
    r = runner.invoke(app, ["train", "--arch", "srm", "-d", str(tiny_data), "-P", "image_size=32", "-P", "epochs=1"])
    fragment = "fail their digest check" if damage == "corrupt" else "are missing"
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"dfk: error: dfk's shipped weights for srm {fragment}"), r.stderr
    assert "reinstall dfk" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert mlflow.search_runs(search_all_experiments=True).empty  # nothing half-written


def test_dfk_weights_train_the_whole_model_in_one_phase_by_default(shipped, tiny_data):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    path, digest = shipped
    cfg = TrainConfig.from_overrides(dict(arch="srm", data_dir=str(tiny_data), image_size=32, batch_size=8, epochs=1,
                                          gradcam_images=0))
    assert (cfg.weights, cfg.fine_tune_at) == ("auto", 0)
    result = train(cfg, experiment="from-dfk", log_model=False)
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["backbone_weights"] == result.backbone_weights == f"dfk:{digest[:12]}"
    assert tags["fit_phases"] == "training: learning rate 0.002"
    reference, _ = create_model("srm", 32, weights="dfk")
    for layer in ("conv1", "bn1", "conv4", "head_dense"):  # everything trained, from dfk's weights
        assert not _same(result.model.get_layer(layer), reference.get_layer(layer)), layer


def test_fine_tune_at_asks_for_the_two_phase_recipe_from_dfk_weights(shipped, tiny_data):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    cfg = TrainConfig.from_overrides(dict(arch="srm", data_dir=str(tiny_data), image_size=32, batch_size=8, epochs=1,
                                          fine_tune_at=15, fine_tune_epochs=1, gradcam_images=0))
    assert cfg.fine_tune_lr == 2e-4
    result = train(cfg, experiment="fine-tune", log_model=False)
    phases = mlflow.get_run(result.run_id).data.tags["fit_phases"].splitlines()
    assert phases == ["phase 1: learning rate 0.002", "phase 2 (last 15 layers): learning rate 0.0002"]
    assert len(result.history["loss"]) == 2
    # Phase 2 trained the whole trunk, BatchNorm included (ModelSpec.fine_tune_batchnorm).
    reference, _ = create_model("srm", 32, weights="dfk")
    for layer in ("conv1", "bn1", "conv4"):
        assert not _same(result.model.get_layer(layer), reference.get_layer(layer)), layer


def test_phase_1_keeps_the_pretrained_trunk_as_it_was(shipped, tiny_data):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    cfg = TrainConfig.from_overrides(dict(arch="srm", data_dir=str(tiny_data), image_size=32, batch_size=8, epochs=1,
                                          fine_tune_at=15, fine_tune_epochs=0, gradcam_images=0))
    result = train(cfg, experiment="head-only", log_model=False)
    assert mlflow.get_run(result.run_id).data.tags["fit_phases"].splitlines()[0] == "phase 1: learning rate 0.002"
    assert len(result.history["loss"]) == 1
    reference, _ = create_model("srm", 32, weights="dfk")
    for layer in ("conv1", "bn1", "conv4", "bn4"):
        assert _same(result.model.get_layer(layer), reference.get_layer(layer)), layer
    assert not _same(result.model.get_layer("head_dense"), reference.get_layer("head_dense"))


def test_from_scratch_is_one_phase(tiny_data, tmp_path, monkeypatch):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    cfg = TrainConfig.from_overrides(dict(arch="npr", data_dir=str(tiny_data), image_size=32, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0))
    result = train(cfg, experiment="scratch", log_model=False)
    assert mlflow.get_run(result.run_id).data.tags["fit_phases"] == "training: learning rate 0.002"


def test_the_pretrain_pipeline_writes_weights_that_weights_dfk_loads(tmp_path, monkeypatch):
    """`python -m dfk.cli.pipelines pretrain` on a tiny corpus; run again, it reuses every step."""
    from dfk.cli.pipelines import app as pipelines

    out, corpus = tmp_path / "out", tmp_path / "corpus"
    args = ["pretrain", "--archs", "srm", "--train", "6", "--validation", "2", "--test", "2", "--image-size", "32",
            "--out", str(out), "--corpus", str(corpus), "--epochs", "1", "-P", "batch_size=8", "-P", "gradcam_images=0"]
    r = runner.invoke(pipelines, args)
    assert r.exit_code == 0, r.output
    listed = json.loads((out / w.MANIFEST).read_text())
    entry = listed["srm"]
    weights_file = out / entry["file"]
    assert entry["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert entry["bytes"] == weights_file.stat().st_size and entry["image_size"] == 32 and entry["epochs"] == 1
    assert entry["corpus"]["train"] == 6 and entry["corpus"]["broad"] is True
    trained = mlflow.get_run(entry["run_id"])
    assert trained.data.tags["backbone_weights"] == "random" and trained.data.params["image_size"] == "32"
    assert entry["experiment"] == "dfk-pretrain"
    parent = mlflow.get_run(trained.data.tags["mlflow.parentRunId"])
    assert parent.data.params["train"] == "6" and parent.data.tags["run_srm"] == entry["run_id"]

    monkeypatch.setenv(w.PRETRAINED_DIR_ENV, str(out))
    model, used = create_model("srm", 64, weights="dfk")
    assert used == f"dfk:{entry['sha256'][:12]}"

    again = runner.invoke(pipelines, args)
    assert again.exit_code == 0, again.output
    runs = mlflow.search_runs(experiment_names=["dfk-pretrain"], order_by=["attributes.start_time DESC"])
    assert runs.iloc[0]["tags.dfk.steps.reused"] == "synth,srm,export"
    assert json.loads((out / w.MANIFEST).read_text())["srm"]["sha256"] == entry["sha256"]
