"""Evaluation on any folder, clean and perturbed, logged as its own run with the shared metrics."""

import csv
import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from dfk.cli import app
from dfk.errors import UserError
from dfk.evaluation.scoring import PERTURBATIONS, parse_perturbations, perturb


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_each_perturbation_keeps_shape_and_changes_pixels(kind):
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for level in PERTURBATIONS[kind]:
        out = perturb(img, kind, level, np.random.default_rng(1))
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)


def test_perturbation_lists_parse_and_bad_ones_are_clear():
    assert parse_perturbations("jpeg:50,blur") == [("jpeg", 50), ("blur", 1), ("blur", 2), ("blur", 3)]
    assert len(parse_perturbations("all")) == sum(len(v) for v in PERTURBATIONS.values())
    assert parse_perturbations(None) == []
    with pytest.raises(UserError, match="unknown perturbation 'fog'"):
        parse_perturbations("fog")
    with pytest.raises(UserError, match="not a number"):
        parse_perturbations("jpeg:high")


def test_evaluate_logs_a_run_with_training_metrics_and_robustness(trained_model, tiny_data):
    result = CliRunner().invoke(app, ["evaluate", str(trained_model), "-d", str(tiny_data), "--perturb", "jpeg:30,resize:0.5"])
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["dfk-eval"], output_format="list")
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert {"test_accuracy", "test_log_loss", "test_ece", "test_brier"} <= set(m)
    for key in ("robust_jpeg_30_roc_auc", "robust_jpeg_30_eer", "robust_resize_0.5_accuracy", "robust_jpeg_30_accuracy_drop"):
        assert key in m
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "robustness")}
    assert {"robustness/robustness.csv", "robustness/robustness.json", "robustness/robustness_heatmap.png"} <= files
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                artifact_path="robustness/robustness.json")).read())
    assert [(r["perturbation"], r["level"]) for r in table["perturbed"]] == [("jpeg", 30), ("resize", 0.5)]


def test_evaluate_bad_inputs_exit_2(trained_model, tiny_data):
    r = CliRunner().invoke(app, ["evaluate", str(trained_model), "-d", "/no/such", "--perturb", "jpeg"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = CliRunner().invoke(app, ["evaluate", str(trained_model), "-d", str(tiny_data), "--perturb", "snow"])
    assert r.exit_code == 2 and "unknown perturbation" in r.stderr


def test_evaluate_scores_a_runs_model_on_its_own_data_by_default_and_builtin_by_name(tiny_data):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    result = train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                                   epochs=1, weights="none", gradcam_images=0, seed=5)))
    uri = f"runs:/{result.run_id}/model"
    r = CliRunner().invoke(app, ["evaluate", uri])
    assert r.exit_code == 0, r.output
    assert f"scored on the test split of {tiny_data} (val_split 0.2, seed 5), as the model's run split it" in r.stdout
    ev = mlflow.get_run(r.stdout.split("evaluation run ")[1].split()[0])
    # The same test split, file for file, scored as the training run scored it (its TensorFlow stream
    # resizes 64 -> 32 px a little differently from the served path). Not compared through ROC-AUC: a
    # model trained one epoch on 12 pictures gives near-equal scores, whose order rounding may swap.
    def scores(run_id):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/test_predictions.csv")
        return {row["path"]: (row["label"], float(row["probability_fake"])) for row in csv.DictReader(open(path))}

    trained, evaluated = scores(result.run_id), scores(ev.info.run_id)
    assert sorted(evaluated) == sorted(trained) and len(trained) == 12
    for path, (label, prob) in trained.items():
        assert evaluated[path][0] == label and evaluated[path][1] == pytest.approx(prob, abs=2e-3)
    assert ev.data.params["seed"] == "5" and ev.data.params["data_dir"] == str(tiny_data)

    r = CliRunner().invoke(app, ["evaluate", uri, "-d", "builtin"])  # the built-in set, generated on first use
    assert r.exit_code == 0, r.output
    assert "scored on the test split of the built-in set (val_split 0.2, seed 42)" in r.stdout


def test_evaluating_on_a_folder_that_changed_since_training_says_so(tiny_data, tmp_path):
    import shutil

    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    result = train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=32, batch_size=8,
                                                   epochs=1, weights="none", gradcam_images=0)))
    extra = sorted((data / "Train" / "Fake").iterdir())[0]
    shutil.copy(extra, data / "Test" / "Fake" / f"added{extra.suffix}")
    r = CliRunner().invoke(app, ["evaluate", f"runs:/{result.run_id}/model", "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert "the folder changed since that run" in r.stdout and "may hold images the model trained on" in r.stdout


def test_evaluate_a_model_whose_run_is_elsewhere_needs_a_folder(trained_model):
    r = CliRunner().invoke(app, ["evaluate", str(trained_model)])
    assert r.exit_code == 2 and "cannot tell which data" in r.stderr and "name the folder to score on" in r.stderr


def test_compare_lists_training_runs_best_first_in_every_format(tiny_data, tmp_path):
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    for seed in (1, 2):
        train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                              epochs=1, weights="none", gradcam_images=0, seed=seed)))
    runner = CliRunner()
    r = runner.invoke(app, ["compare", "--format", "json", "--chart", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 and rows[0]["test_roc_auc"] >= rows[1]["test_roc_auc"]
    assert {"arch", "learning_rate", "epochs_trained", "best_val_roc_auc", "test_accuracy", "test_accuracy_at_threshold",
            "duration_s"} <= set(rows[0])  # each metric under its MLflow name
    assert (tmp_path / "c.png").exists()
    csv_out = runner.invoke(app, ["compare", "--format", "csv", "--chart", str(tmp_path / "c.png")])
    assert csv_out.stdout.splitlines()[0].startswith("run,experiment,name,arch")
    assert runner.invoke(app, ["compare"]).exit_code == 0  # the comparison runs themselves are not listed
    assert len(json.loads(runner.invoke(app, ["compare", "--format", "json"]).stdout)) == 2
    bad = runner.invoke(app, ["compare", "--experiment", "none-such"])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr
