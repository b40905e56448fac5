"""The one-command pipeline: train srm and resnet as child runs, register, promote, check robustness;
run again, every step is reused."""

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from dfk.cli import app


@pytest.mark.slow
def test_main_trains_registers_promotes_and_checks_robustness(tiny_data):
    args = ["main", "-d", str(tiny_data), "--perturb", "jpeg:50", "-P", "image_size=32", "-P", "epochs=1",
            "-P", "batch_size=8", "-P", "weights=none", "-P", "gradcam_images=0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "champion: models:/deepfake-detector@champion" in r.stdout and "mlflow models serve" in r.stdout
    assert "srm: 32 px, up to 1 epochs" in r.stdout  # the settings each architecture trains with
    runs = mlflow.search_runs(experiment_names=["dfk"], output_format="list")
    parent = next(x for x in runs if x.data.tags.get("pipeline") == "main")
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["dfk.step"] for c in children) == ["evaluate", "promote", "register", "resnet", "srm"]
    trained = [c for c in children if "arch" in c.data.tags]
    assert sorted(c.data.tags["arch"] for c in trained) == ["resnet", "srm"]
    champion = MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    assert champion.run_id in {c.info.run_id for c in trained}
    (ev,) = mlflow.search_runs(experiment_names=["dfk-eval"], output_format="list")
    clean, jpeg = ev.data.metrics["test_roc_auc"], ev.data.metrics["robust_jpeg_50_roc_auc"]
    assert ev.data.metrics["robust_jpeg_50_roc_auc_drop"] == pytest.approx(clean - jpeg)
    assert {"robust_jpeg_50_accuracy", "robust_jpeg_50_eer"} <= set(ev.data.metrics)
    assert ev.data.tags["model_uri"] == f"models:/deepfake-detector/{champion.version}"  # the version promote chose
    assert parent.data.metrics["champion_test_roc_auc"] == pytest.approx(clean)

    # Again with nothing changed: every step reused, nothing trained, the same answer.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    for c in children:
        assert f"reusing {c.data.tags['dfk.step']} run {c.info.run_id} (finished " in again.stdout
    assert len(mlflow.search_runs(experiment_names=["dfk"], output_format="list", filter_string="tags.arch != ''")) == 2
    assert f"(version {champion.version})" in again.stdout


def test_main_with_an_unknown_arch_writes_nothing(tmp_path):
    r = CliRunner().invoke(app, ["main", "--archs", "cnn,alexnet"])
    assert r.exit_code == 2 and "unknown architecture 'alexnet'" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()
