"""Evidence that training learns: the CNN beats 0.85 on the built-in set; shuffled labels do not."""

import os

import numpy as np
import pytest

from dfk.config import TrainConfig
from dfk.data.synth import SynthSpec, generate
from dfk.training.trainer import train

pytestmark = pytest.mark.slow


def test_cnn_reaches_085_test_accuracy_on_the_builtin_set_at_64px(tmp_path):
    data = generate(SynthSpec(train=1000, validation=150, test=150, image_size=64, seed=11), tmp_path / "d")
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=64, epochs=20, gradcam_images=4))
    metrics = train(cfg).metrics
    # Accuracy of the labels the model gives: at the decision threshold chosen on validation.
    assert metrics["test_accuracy_at_threshold"] >= 0.85, metrics
    assert metrics["test_roc_auc"] >= 0.90, metrics


def test_shuffled_training_labels_stay_near_chance(tmp_path):
    """If labels reached the model in any other way than through training (a label bug), this would learn."""
    src = generate(SynthSpec(train=300, validation=60, test=100, image_size=64, seed=12), tmp_path / "src")
    dst = tmp_path / "shuffled"
    rng = np.random.default_rng(0)
    for split in ("Train", "Validation", "Test"):
        files = sorted((src / split / "Fake").glob("*.jpg")) + sorted((src / split / "Real").glob("*.jpg"))
        labels = ["Fake"] * (len(files) // 2) + ["Real"] * (len(files) // 2)
        if split == "Train":
            labels = list(rng.permutation(labels))
        else:
            labels = [f.parent.name for f in files]
        for f, cls in zip(files, labels):
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
            os.link(f, dst / split / cls / f"{f.parent.name}_{f.name}")
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(dst), image_size=64, epochs=8, gradcam_images=0))
    metrics = train(cfg).metrics
    assert metrics["test_accuracy"] <= 0.65, metrics
    assert 0.3 <= metrics["test_roc_auc"] <= 0.7, metrics


@pytest.mark.timeout(1800)
def test_the_main_job_on_the_builtin_set_leaves_a_champion_that_detects():
    """The README's main command as it runs by default: its champion must detect, and its heatmaps
    must point at the forged regions better than both the random and the centre-prior baselines."""
    import mlflow
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from dfk.cli import app

    r = CliRunner().invoke(app, ["main"])
    assert r.exit_code == 0, r.output
    champion = MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    m = mlflow.get_run(champion.run_id).data.metrics
    # What docs/DEVELOPING.md promises (Tests): >= 0.94. The goal, 0.95, is bench.demo's to measure
    # (met in every fresh run so far: 0.950-0.971, docs/BENCHMARKS.md); training on a CPU is not
    # bit-reproducible and moves the figure by about 0.01, so the promise leaves that margin.
    assert m["test_roc_auc"] >= 0.94, m
    assert m["gradcam_pointing_game"] > max(m["gradcam_pointing_game_random"], m["gradcam_pointing_game_centre"]), m
    archs = {x.data.tags["arch"] for x in mlflow.search_runs(experiment_names=["dfk"], output_format="list")
             if "arch" in x.data.tags}
    assert {"srm", "resnet"} <= archs  # the notebook's ResNet50 path still runs


def _epochs_to(history: dict, key: str, level: float) -> int:
    """First epoch (1-based) whose ``key`` reaches ``level``; one past the end if none does."""
    values = history[key]
    return next((i + 1 for i, v in enumerate(values) if v >= level), len(values) + 1)


@pytest.mark.timeout(1800)
def test_the_forensic_detector_learns_faster_than_the_notebook_cnn(tmp_path):
    data = generate(SynthSpec(train=800, validation=100, test=20, seed=13), tmp_path / "d")
    common = dict(data_dir=str(data), image_size=64, epochs=10, patience=10, gradcam_images=0, seed=13, weights="none")
    srm = train(TrainConfig.from_overrides(dict(arch="srm", **common)), log_model=False)
    cnn = train(TrainConfig.from_overrides(dict(arch="cnn", **common)), log_model=False)
    fast, slow = _epochs_to(srm.history, "val_auc", 0.9), _epochs_to(cnn.history, "val_auc", 0.9)
    assert fast <= 10 and fast < slow, (srm.history["val_auc"], cnn.history["val_auc"])


@pytest.mark.timeout(1800)
def test_fine_tuning_from_dfk_weights_beats_training_from_scratch_on_a_small_set(tmp_path):
    """A user with a few hundred pictures (here the forgeries `dfk data synth --from-reals` makes of
    real photographs, drawn with another seed than the pre-training corpus): starting from the shipped
    weights must detect them better than the same recipe from random weights."""
    from dfk.data.synth import SELF_BLENDS
    from dfk.models.weights import shipped_archs

    assert "srm" in shipped_archs()
    data = generate(SynthSpec(train=150, validation=40, test=150, manipulations=SELF_BLENDS, broad=True, seed=21),
                    tmp_path / "small")
    common = dict(arch="srm", data_dir=str(data), image_size=64, epochs=12, gradcam_images=0, seed=21)
    auc = {w: train(TrainConfig.from_overrides(dict(common, weights=w)), log_model=False).metrics["test_roc_auc"]
           for w in ("none", "dfk")}
    assert auc["dfk"] > auc["none"] + 0.03, auc
