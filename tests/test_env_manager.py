"""`mlflow run` building its own environment with uv, as on a machine without conda.

The README's first screen says how `mlflow run` gets its environment: conda from conda.yaml by
default, `--env-manager uv` without conda, `local` inside the venv. This runs the uv path for real:
MLflow builds a fresh virtualenv from conda.yaml's requirements (downloads from PyPI the first
time) and runs an architecture's entry point in it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_mlflow_run_with_env_manager_uv_trains_in_its_own_environment(tmp_path, tiny_data):
    if not (BIN / "uv").exists() and not shutil.which("uv"):
        pytest.fail("uv is not installed (it comes with the test extra: pip install -e '.[test]')")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", MLFLOW_ENV_ROOT=str(tmp_path / "envs"))
    env.pop("PYTHONPATH", None)  # the run must import dfk from its own environment and the project folder
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "cnn", "--env-manager", "uv", "--experiment-name", "uv",
           "-P", f"data_dir={tiny_data}", "-P", "image_size=32", "-P", "epochs=1", "-P", "batch_size=8",
           "-P", "weights=none"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["uv"])
    assert list(runs.status) == ["FINISHED"] and runs.iloc[0]["tags.arch"] == "cnn"
    # it ran in an environment uv built, not in this venv
    envs = list((tmp_path / "envs").iterdir())
    assert envs, "no environment was built under MLFLOW_ENV_ROOT"
