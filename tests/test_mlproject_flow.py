"""Every MLproject entry point through `mlflow run . -e NAME --env-manager local`, chained as a user
chains them, against one store and with no --experiment-name: the runs land in MLflow's Default
experiment and every later step finds them there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from bench.localserver import request, running, venv_tool
from dfk.models import get_spec, list_models
from dfk.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def mlflow_run(entry: str, env: dict, cwd: Path, *params: str, timeout: int = 600) -> str:
    cmd = [venv_tool("mlflow"), "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"mlflow run -e {entry} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout + out.stderr


def runs_of(entry_tag: str | None = None):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if entry_tag is None or r.data.tags.get("mlflow.project.entryPoint") == entry_tag]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_entry_point_chained_as_a_user_types_it(tmp_path, tiny_data):
    store = tmp_path / "store"
    store.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    checkout_before = sorted(os.listdir(ROOT))
    tiny = ["batch_size=8", "epochs=1", "weights=none", f"data_dir={tiny_data}"]

    # 1. Each architecture, its defaults at a tiny size.
    for arch in list_models():
        size = max(32, get_spec(arch).min_image_size)
        mlflow_run(arch, env, work, *tiny, f"image_size={size}")
        (run,) = runs_of(arch)
        assert run.info.status == "FINISHED" and run.info.experiment_id == "0"  # MLflow's Default
        assert run.data.tags["arch"] == arch and run.data.tags["model_uri"] == f"runs:/{run.info.run_id}/model"
        files = {f.path for f in MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/test_confusion_matrix.png" in files and "evaluation/test_roc_curve.png" in files
        assert {"test_roc_auc", "test_eer", "best_val_roc_auc"} <= set(run.data.metrics)

    # 2. The whole job, plain `mlflow run .` (entry point main).
    out = mlflow_run("main", env, work, f"data_dir={tiny_data}", "archs=cnn:batch_size=8:weights=none",
                     "image_size=32", "epochs=1", "perturb=jpeg:50")
    assert f"champion: {SETTINGS.champion_uri}" in out
    (parent,) = runs_of("main")
    children = [r for r in runs_of() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "arch" in r.data.tags]
    assert parent.info.status == "FINISHED" and [c.data.tags["arch"] for c in children] == ["cnn"]
    champion = MlflowClient().get_model_version_by_alias(SETTINGS.model_name, SETTINGS.champion)
    assert champion.run_id == children[0].info.run_id  # the job registers the runs it trained

    # 3. A sweep: parameters logged once, with the values used; its study beside the tracking store.
    mlflow_run("tune", env, work, "arch=cnn", f"data_dir={tiny_data}", "n_trials=2", "epochs=2", "image_size=32",
               "study_name=flow")
    (sweep,) = runs_of("tune")
    params = sweep.data.params
    assert sweep.info.status == "FINISHED" and params["storage"] == f"sqlite:///{store}/optuna.db"
    assert (store / "optuna.db").exists()
    assert params["image_size"] == "32" and "image_size_resolved" not in params  # used as given: logged once
    assert params["study_name"] == "flow" and params["pruner_settings"] == "n_startup_trials=3, n_warmup_steps=1"
    trials = [r for r in runs_of() if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(trials) == 2 and sweep.data.metrics["trials_complete"] + sweep.data.metrics.get("trials_pruned", 0) == 2

    # 4. compare and register find the runs mlflow run put in Default, with no flag.
    out = mlflow_run("compare", env, work)
    assert "Default" in out and "test_roc_auc" in out
    out = mlflow_run("register", env, work)
    assert "deepfake-detector version" in out and "challenger" in out

    # 5. promote judges on the challenger's own data and split, and says so.
    client = MlflowClient()
    challenger = client.get_model_version_by_alias(SETTINGS.model_name, SETTINGS.challenger)
    if challenger.version == champion.version:  # the job's own run was the best: another run challenges it
        (srm,) = runs_of("srm")
        challenger = mlflow.register_model(srm.data.tags["model_uri"], SETTINGS.model_name)
        client.set_registered_model_alias(SETTINGS.model_name, SETTINGS.challenger, challenger.version)
    out = mlflow_run("promote", env, work)
    assert f"judged on the test split of {tiny_data}" in out and "as the model's run split it" in out
    assert client.get_model_version(SETTINGS.model_name, challenger.version).tags["promotion_data"] == str(tiny_data)

    # 6. evaluate the champion on its own data (no data_dir given).
    out = mlflow_run("evaluate", env, work)
    assert f"scored on the test split of {tiny_data}" in out
    (ev,) = [r for r in runs_of("evaluate")]
    assert ev.data.tags["model_uri"] == SETTINGS.champion_uri and "test_roc_auc" in ev.data.metrics

    # 7. Grad-CAM overlays of a folder, named relative to where mlflow run was started; kept in the run.
    mlflow_run("gradcam", env, tiny_data, "images=Test/Fake")
    (cam,) = runs_of("gradcam")
    files = {f.path for f in client.list_artifacts(cam.info.run_id, "gradcam")}
    assert "gradcam/gallery.png" in files
    assert len(files) == len(list((tiny_data / "Test" / "Fake").iterdir())) + 1

    # 8. The web app on the champion, stopped when the block ends.
    cmd = [venv_tool("mlflow"), "run", str(ROOT), "-e", "app", "--env-manager", "local", "-P", "port=0"]
    with running(cmd, "/healthz", env=env, cwd=work, timeout=180) as app:  # on the port it chose
        status, info = request(f"{app.url}/api/model")
        assert status == 200 and info["alias"] == SETTINGS.champion

    # 9. The built-in set written to a folder of the user's.
    mlflow_run("synth", env, work, f"out={work / 'synthetic'}")
    manifest = json.loads((work / "synthetic" / "manifest.json").read_text())
    assert manifest and all((work / "synthetic" / s / c).is_dir() for s in ("Train", "Validation", "Test")
                            for c in ("Fake", "Real"))

    assert sorted(os.listdir(ROOT)) == checkout_before  # nothing was written into the project checkout
    assert not [r for r in runs_of() if r.info.status == "RUNNING"]
