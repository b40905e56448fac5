"""`mlflow run . -e ARCH` works end to end: the entry point, its parameters and the finished run."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mlflow_run_entry_point_finishes_a_run(tmp_path, tiny_data):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "cnn", "--env-manager", "local",
           "--experiment-name", "entry", "-P", f"data_dir={tiny_data}", "-P", "image_size=32", "-P", "epochs=1",
           "-P", "batch_size=8", "-P", "weights=none"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["entry"])
    assert list(runs.status) == ["FINISHED"]
    run = runs.iloc[0]
    assert run["tags.arch"] == "cnn" and run["params.image_size"] == "32"
    # mlflow run logs the entry point's "auto"; dfk adds what it resolved to, and compare shows that.
    assert run["params.learning_rate"] == "auto" and run["params.learning_rate_resolved"] == "0.001"
    assert run["params.fine_tune_lr"] == "auto" and run["params.fine_tune_lr_resolved"] == "1e-05"
    assert run["params.gradcam_images"] == "8"
    # The logged accuracy at the chosen threshold is the one in the run's own confusion matrix.
    import json

    client = mlflow.MlflowClient()
    cm = json.loads(open(client.download_artifacts(run.run_id, "evaluation/test_confusion_matrix.json")).read())
    at_threshold = (cm["tn"] + cm["tp"]) / (cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"])
    assert run["metrics.test_accuracy_at_threshold"] == pytest.approx(at_threshold)
    assert cm["tn"] + cm["fp"] == 6 and cm["fn"] + cm["tp"] == 6  # the tiny set's test split, every image scored


def test_mlflow_run_with_a_bad_parameter_fails_with_one_line(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "cnn", "--env-manager", "local",
           "--experiment-name", "entry", "-P", "data_dir=/no/such/dir"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "dfk: error: data directory /no/such/dir does not exist" in out.stderr
    assert "Traceback" not in out.stderr.split("dfk: error")[0][-2000:]
    assert list(mlflow.search_runs(experiment_names=["entry"]).status) == ["FAILED"]
