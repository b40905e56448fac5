"""Register the best run, promote behind a gate, predict from the registry."""

import csv

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from dfk.cli import app
from dfk.config import TrainConfig
from dfk.errors import UserError
from dfk.registry import promote, register_best
from dfk.training import train


def _train(data, experiment, seed):
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=32, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0, seed=seed))
    return train(cfg, experiment=experiment)


@pytest.fixture
def two_versions(tiny_data):
    a = _train(tiny_data, "a", 1)
    b = _train(tiny_data, "b", 2)
    first = register_best("a")
    second = register_best("b")
    return a, b, first, second


def test_register_tags_the_version_and_sets_aliases(two_versions):
    a, b, first, second = two_versions
    client = MlflowClient()
    assert (first.version, first.aliases, first.run_id) == ("1", ["challenger", "champion"], a.run_id)
    assert (second.version, second.aliases) == ("2", ["challenger"])
    v = client.get_model_version("deepfake-detector", "2")
    assert v.tags["arch"] == "cnn" and v.tags["run_id"] == b.run_id and len(v.tags["dataset_fingerprint"]) == 16
    assert float(v.tags["test_roc_auc"]) == pytest.approx(b.metrics["test_roc_auc"], abs=1e-6)
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "1"
    again = register_best("b")
    assert (again.version, again.created) == ("2", False)


def test_promotion_gate_never_promotes_a_model_that_is_not_better(two_versions, tiny_data):
    client = MlflowClient()
    d = promote(data_dir=tiny_data, margin=1.0)  # nothing gains a whole ROC-AUC point
    assert not d.promoted and d.champion == "1"
    v2 = client.get_model_version("deepfake-detector", "2")
    assert "kept as challenger" in v2.description and v2.tags["promotion_decision"] == "kept as challenger"
    before = (v2.description, v2.tags)
    d2 = promote(data_dir=tiny_data, margin=1.0)
    v2 = client.get_model_version("deepfake-detector", "2")
    assert not d2.promoted and (v2.description, v2.tags) == before
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "1"


def test_promotion_moves_champion_when_the_gain_clears_the_margin(two_versions, tiny_data):
    d = promote(data_dir=tiny_data, margin=0.0)
    gain = d.metrics["challenger"]["roc_auc"] - d.metrics["champion"]["roc_auc"]
    assert d.promoted == (gain >= 0)
    champion = str(MlflowClient().get_model_version_by_alias("deepfake-detector", "champion").version)
    assert champion == ("2" if gain >= 0 else "1")
    if d.promoted:  # a second run has nothing left to do
        assert not promote(data_dir=tiny_data, margin=0.0).promoted


def test_register_without_runs_is_a_clear_error():
    with pytest.raises(UserError, match="experiment 'nothing' does not exist"):
        register_best("nothing")
    result = CliRunner().invoke(app, ["promote", "--name", "nobody"])
    assert result.exit_code == 2 and "has no 'challenger' version" in result.stderr


def test_predict_scores_folders_to_csv_and_skips_unreadable(trained_model, tiny_data, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "Test", folder)
    (folder / "Fake" / "broken.png").write_bytes(b"\x89PNG nope")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", str(trained_model), str(folder), "--out", str(out), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"fake", "real"}
    assert all(0 <= float(r["probability_fake"]) <= 1 for r in rows)
    assert "broken.png" in result.stderr
    model = mlflow.pyfunc.load_model(str(trained_model))
    import pandas as pd

    first = next(r for r in rows)
    expected = model.predict(pd.DataFrame({"image": [open(first["path"], "rb").read()]})).probability_fake[0]
    assert float(first["probability_fake"]) == pytest.approx(expected, abs=1e-5)
