"""One training path for every architecture, each run complete in MLflow."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from dfk.config import TrainConfig
from dfk.models import get_spec, list_models
from dfk.training.trainer import train
from tests.conftest import HEAVY

EPOCH_KEYS = {"loss", "accuracy", "auc", "precision", "recall"}
TEST_KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "eer", "tpr_at_fpr_1pct",
             "log_loss", "brier", "ece", "threshold", "accuracy_at_threshold", "f1_at_threshold"}
ARTIFACTS = {
    "config.json", "learning_curves.png", "model_summary.txt", "history.json", "data/bad_files.tsv",
    "data/dataset.json", "evaluation/test_confusion_matrix.png", "evaluation/test_confusion_matrix.json",
    "evaluation/test_classification_report.txt", "evaluation/test_classification_report.json",
    "evaluation/test_roc_curve.png", "evaluation/test_pr_curve.png", "evaluation/test_reliability_diagram.png",
    "evaluation/test_predictions.csv",
    "gradcam/gradcam_gallery.png",
}
GRADCAM_KEYS = {"gradcam_pointing_game", "gradcam_mask_energy", "gradcam_pointing_game_random",
                "gradcam_mask_energy_random"}


def _artifacts(run_id, path=""):
    out = set()
    for f in mlflow.MlflowClient().list_artifacts(run_id, path):
        out |= _artifacts(run_id, f.path) if f.is_dir else {f.path}
    return out


def tiny_config(arch, data, **kw):
    size = max(32, get_spec(arch).min_image_size + 1)
    params = dict(arch=arch, data_dir=str(data), image_size=size, batch_size=8, epochs=1, weights="none",
                  gradcam_images=2)
    return TrainConfig.from_overrides({**params, **kw})


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in list_models()]
)
def test_every_architecture_logs_a_complete_run(arch, tiny_data, jpeg_bytes):
    result = train(tiny_config(arch, tiny_data))
    run = mlflow.get_run(result.run_id)
    client = mlflow.MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.tags["arch"] == arch and run.data.tags["backbone_weights"] == "random"
    assert run.data.tags["dfk_version"] and run.data.tags["git_commit"]
    assert run.data.tags["mlflow.runName"].startswith(f"{arch}-")
    assert run.data.params["image_size"] == str(tiny_config(arch, tiny_data).image_size)
    logged_config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json")).read())
    assert logged_config["arch"] == arch and logged_config["weights"] == "none"
    # per-epoch curves, train and validation
    for key in EPOCH_KEYS:
        assert len(client.get_metric_history(run.info.run_id, key)) == 1
        assert len(client.get_metric_history(run.info.run_id, f"val_{key}")) == 1
    assert {f"test_{k}" for k in TEST_KEYS} - {"test_roc_auc", "test_eer"} <= set(run.data.metrics)
    assert ARTIFACTS <= _artifacts(run.info.run_id)
    assert GRADCAM_KEYS <= set(run.data.metrics)
    # the dataset as an MLflow input, with its fingerprint and counts
    (ds_input,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in ds_input.tags}
    assert tags["train_fake"] == "12" and tags["test_real"] == "6" and len(tags["fingerprint"]) == 16
    # the model: pyfunc, image bytes in, probabilities out
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    out = model.predict(pd.DataFrame({"image": [jpeg_bytes, jpeg_bytes]}))
    assert list(out.columns) == ["probability_fake", "label"]
    assert np.allclose(out.probability_fake, out.probability_fake[0]) and 0 <= out.probability_fake[0] <= 1
    assert set(out.label) <= {"fake", "real"}


def test_dataset_input_carries_the_fingerprint(tiny_data):
    from dfk.data.scan import scan

    result = train(tiny_config("cnn", tiny_data, gradcam_images=0))
    (ds_input,) = mlflow.get_run(result.run_id).inputs.dataset_inputs
    assert ds_input.dataset.digest == scan(tiny_data).fingerprint
    assert ds_input.dataset.name == tiny_data.name


def test_a_failed_run_ends_failed_and_an_interrupted_one_killed(tiny_data, monkeypatch):
    import keras

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.Model, "fit", boom)
    with pytest.raises(RuntimeError):
        train(tiny_config("cnn", tiny_data))

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("cnn", tiny_data))
    runs = mlflow.search_runs(experiment_names=["dfk"], order_by=["start_time ASC"])
    assert list(runs.status) == ["FAILED", "KILLED"]


def test_nan_loss_fails_the_run_with_a_clear_message(tiny_data):
    import keras

    from dfk.errors import UserError

    class Poison(keras.callbacks.Callback):
        """Corrupt the weights after the first batch, as an exploding gradient would."""

        def on_train_batch_end(self, batch, logs=None):
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])

    with pytest.raises(UserError, match="diverged"):
        train(tiny_config("cnn", tiny_data, epochs=3), callbacks=[Poison()])
    runs = mlflow.search_runs(experiment_names=["dfk"])
    assert list(runs.status) == ["FAILED"]


def test_temperature_scaling_is_fitted_on_validation_and_served(tiny_data, jpeg_bytes):
    from dfk.metrics.binary import apply_temperature, fit_temperature

    # an over-confident model: the fitted temperature softens it
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.where(rng.random(400) < 0.7, y, 1 - y) * 0.98 + 0.01
    t = fit_temperature(y, p)
    assert t > 1.5
    from dfk.metrics.binary import expected_calibration_error

    assert expected_calibration_error(y, apply_temperature(p, t)) < expected_calibration_error(y, p)

    result = train(tiny_config("cnn", tiny_data, calibrate="true", gradcam_images=0))
    run = mlflow.get_run(result.run_id)
    assert {"temperature", "test_ece_uncalibrated", "test_ece"} <= set(run.data.metrics)
    assert "evaluation/uncalibrated/test_uncalibrated_reliability_diagram.png" in _artifacts(result.run_id)
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    served = model.predict(pd.DataFrame({"image": [jpeg_bytes]})).probability_fake[0]
    from dfk.data.decode import decode_image

    size = int(run.data.params["image_size"])
    raw = float(np.asarray(result.model(decode_image(jpeg_bytes, size)[None].astype("float32"))).squeeze())
    assert served == pytest.approx(float(apply_temperature([raw], run.data.metrics["temperature"])[0]), abs=1e-5)
