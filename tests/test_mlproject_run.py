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
    assert run["params.fine_tune_lr"] == "1e-05" and run["params.gradcam_images"] == "8"
    assert run["metrics.test_accuracy"] >= 0


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


@pytest.mark.slow
def test_plain_mlflow_run_is_the_whole_job(tmp_path, tiny_data):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local",
           "--experiment-name", "whole", "-P", f"data_dir={tiny_data}", "-P", "archs=cnn", "-P", "image_size=32",
           "-P", "epochs=1", "-P", "perturb=jpeg:50"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "champion: models:/deepfake-detector@champion" in out.stdout
    runs = mlflow.search_runs(experiment_names=["whole"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("pipeline") == "main")
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.data.tags["arch"] == "cnn" and child.info.status == "FINISHED"
