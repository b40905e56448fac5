"""Shared fixtures: tiny built-in datasets and an isolated MLflow store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: keras.applications backbones that take 30-120 s to build and train here: their per-architecture
#: tests run in the slow suite (`.ci/run` runs it), so the default one stays under 15 minutes.
HEAVY = {"resnet", "xception", "convnext", "efficientnet"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own working folder, MLflow store and built-in data cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DFK_CACHE", str(tmp_path / "cache"))
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None  # an experiment id chosen in another test's store means nothing here
    yield
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small built-in set at 64 px: 12/6/6 images per class in Train/Validation/Test."""
    from dfk.data.synth import SynthSpec, generate

    return generate(SynthSpec(train=12, validation=6, test=6, image_size=64, seed=1),
                    tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def jpeg_bytes(tiny_data) -> bytes:
    return sorted((tiny_data / "Test" / "Fake").glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, tiny_data) -> Path:
    """A tiny cnn trained for one epoch on the tiny set, as a local MLflow model folder."""
    import mlflow

    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    d = tmp_path_factory.mktemp("trained")
    mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                          epochs=1, weights="none", gradcam_images=0))
    result = train(cfg, experiment="fixture")
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model", dst_path=str(d / "model")))


@pytest.fixture(scope="session")
def champion(tmp_path_factory, tiny_data) -> str:
    """A tracking store whose ``models:/deepfake-detector@champion`` is a tiny trained cnn; its URI."""
    import mlflow

    from dfk.config import TrainConfig
    from dfk.registry.promotion import promote, register_best
    from dfk.training.trainer import train

    d = tmp_path_factory.mktemp("champion")
    uri = f"sqlite:///{d}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                              epochs=1, weights="none", gradcam_images=0))
        train(cfg, experiment="serve")
        register_best("serve")
        promote(data_dir=tiny_data)
    finally:
        mlflow.set_tracking_uri(previous)
    return uri
