"""The command line as a user meets it: fast help, one-line errors with exit 2, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dfk.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_tensorflow_or_mlflow():
    code = "import sys; from dfk.cli import app; import dfk.config, dfk.models; " \
           "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_out = subprocess.run([sys.executable, "-m", "dfk", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "train" in help_out.stdout and "data" in help_out.stdout


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dfk: error: "), result.stderr
    for f in fragments:
        assert f in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--arch", "alexnet"], ["unknown architecture 'alexnet'", "valid: cnn"]),
        (["train", "-P", "epochs=zero"], ["epochs='zero' is not a valid int"]),
        (["train", "-P", "epochs"], ["is not KEY=VALUE"]),
        (["train", "-P", "batchsize=8"], ["unknown parameter 'batchsize'"]),
        (["train", "-d", "/no/such/folder"], ["/no/such/folder does not exist"]),
        (["data", "inspect", "/no/such/folder"], ["does not exist"]),
        (["data", "synth", "out", "--train", "1"], ["at least 2"]),
        # mlflow run passes a -P its entry point does not declare as --key value: checked like -P.
        (["train", "--dropout", "lots"], ["parameter dropout='lots' is not a valid float"]),
        (["train", "--drop-out", "0.3"], ["unknown parameter 'drop_out'", "valid parameters: arch"]),
        (["main", "--archs", "cnn,alexnet", "--dropout", "0.3"], ["unknown architecture 'alexnet'"]),
        (["tune", "--arch", "cnn", "--epochs"], ["unexpected argument '--epochs'"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, fragments, tmp_path):
    result = runner.invoke(app, args)
    _one_line_error(result, *fragments)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "out").exists()


def test_train_on_a_folder_missing_a_split_writes_nothing(tmp_path, tiny_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shutil.rmtree(data / "Test")
    result = runner.invoke(app, ["train", "-d", str(data), "-P", "image_size=32"])
    _one_line_error(result, "has no Test folder")
    assert not (tmp_path / "mlflow.db").exists()


def test_synth_then_inspect(tmp_path):
    out = tmp_path / "set"
    result = runner.invoke(app, ["data", "synth", str(out), "--train", "20", "--validation", "4", "--test", "4",
                                 "--image-size", "48"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "Train" / "Fake").glob("*.jpg"))) == 20
    result = runner.invoke(app, ["data", "inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["train"] == {"real": 20, "fake": 20}
    assert report["bad_files"] == 0 and len(report["fingerprint"]) == 16
    assert not any(cue["leaks"] for cue in report["leakage"])
    assert "warning" not in result.stderr


def test_inspect_warns_about_format_leakage_and_lists_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "leaky"
    for split in ("Train", "Validation", "Test"):
        for cls, fmt in (("Fake", "PNG"), ("Real", "JPEG")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(10):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.{fmt.lower()}", fmt)
    (root / "Train" / "Real" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = runner.invoke(app, ["data", "inspect", str(root)])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stdout and "bad files: 1" in result.stdout
    assert "format alone separates fakes from reals" in result.stderr
    assert "fingerprint" in result.stdout


def test_params_lists_every_field_with_its_default():
    result = runner.invoke(app, ["params"])
    assert result.exit_code == 0
    assert any(line.split()[:2] == ["image_size", "auto"] for line in result.stdout.splitlines())
    assert any(line.split()[:2] == ["patience", "5"] for line in result.stdout.splitlines())


def test_params_mlflow_run_logged_are_logged_once_with_what_was_used():
    """mlflow run logs an entry point's parameters as typed; dfk adds <key>_resolved where it used
    something else (auto resolved, an empty default filled in) and never logs a key twice."""
    import mlflow

    from dfk.runs.tracking import log_params_once, run_param

    with mlflow.start_run() as run:
        mlflow.log_params({"learning_rate": "auto", "storage": "", "n_trials": "4", "epochs": "16"})
        log_params_once({"learning_rate": 0.002, "storage": "sqlite:///x/optuna.db", "n_trials": 4, "epochs": 16,
                         "seed": 42, "dropout": None})
        log_params_once({"learning_rate": 0.002, "seed": 42})  # again: nothing new, no error
    params = mlflow.get_run(run.info.run_id).data.params
    assert params == {"learning_rate": "auto", "learning_rate_resolved": "0.002", "storage": "",
                      "storage_resolved": "sqlite:///x/optuna.db", "n_trials": "4", "epochs": "16", "seed": "42",
                      "dropout": ""}
    assert run_param(mlflow.get_run(run.info.run_id), "learning_rate") == "0.002"


def test_the_mlproject_runs_dfk_commands_with_the_commands_own_defaults():
    """Each entry point is `python -m dfk COMMAND` (a pipeline's `python -m dfk.cli.pipelines NAME`); where it
    declares a default, it is the command's."""
    import yaml

    from dfk.settings import SETTINGS
    from dfk.cli.pipelines import app as pipelines_app

    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert all(e["command"].startswith(("python -m dfk ", "python -m dfk.cli.pipelines ")) for e in spec.values())
    assert spec["register"]["parameters"]["name"]["default"] == SETTINGS.model_name
    assert float(spec["promote"]["parameters"]["margin"]["default"]) == SETTINGS.promotion_margin
    assert spec["main"]["parameters"]["archs"]["default"] == SETTINGS.archs
    assert spec["app"]["parameters"]["model_uri"]["default"] == SETTINGS.champion_uri
    for name in ("evaluate", "tune", "register", "promote", "gradcam", "app", "synth", "compare", "main", "sweep",
                 "prepare", "generalization"):
        words = spec[name]["command"].split()[3:]
        command = words[:next(i for i, w in enumerate(words + ["-"]) if w.startswith(("{", "-")))]
        cli = pipelines_app if spec[name]["command"].startswith("python -m dfk.cli.pipelines ") else app
        help_out = runner.invoke(cli, [*command, "--help"])
        assert help_out.exit_code == 0, (name, help_out.output)
        for flag in (w for w in words if w.startswith("--")):
            assert flag in help_out.output, (name, flag)



def test_experiments_dfk_creates_keep_artifacts_beside_a_local_store(tmp_path, monkeypatch):
    """Not in ./mlruns of whichever folder the process runs in (under mlflow run: the checkout)."""
    import mlflow

    from dfk.runs.tracking import set_experiment

    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    exp = set_experiment("dfk-eval")
    assert exp.artifact_location == str(store / "mlruns" / "dfk-eval")
    assert set_experiment("dfk-eval").experiment_id == exp.experiment_id
    with mlflow.start_run(experiment_id=exp.experiment_id):
        mlflow.log_text("x", "x.txt")
    assert not (elsewhere / "mlruns").exists() and list((store / "mlruns").rglob("x.txt"))


@pytest.mark.parametrize("args, status", [
    (["data", "synth", "small", "--train", "2", "--validation", "2", "--test", "2", "--image-size", "32"], "FINISHED"),
    (["register", "--experiment", "none-such"], "FAILED"),
])
def test_the_entry_point_run_ends_with_the_command(args, status, monkeypatch):
    """Under mlflow run, a command that opens no run of its own still ends the entry point's run."""
    import mlflow

    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    runner.invoke(app, args)
    assert mlflow.get_run(run_id).info.status == status


def test_a_tracking_server_that_does_not_answer_is_one_line_at_once(monkeypatch):
    """MLflow retries a refused connection for minutes; a mistyped server URI fails on dfk's one
    probe, before MLflow is asked anything."""
    import socket
    import urllib.request

    import requests

    probes, asked = [], []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: probes.append(url) or real_urlopen(url, *a, **k))
    monkeypatch.setattr(requests.Session, "request", lambda self, method, url, *a, **k: asked.append(url) or
                        pytest.fail(f"MLflow was asked {method} {url}"))
    with socket.socket() as held:  # bound, never listening: refused for as long as the test holds it
        held.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{held.getsockname()[1]}"
        for args, env in (([f"--tracking-uri={uri}", "compare"], {}), (["register"], {"MLFLOW_TRACKING_URI": uri})):
            probes.clear()
            result = CliRunner().invoke(app, args, env=env)
            assert result.exit_code == 2 and probes == [f"{uri}/health"] and not asked, (probes, asked)
            assert result.stderr.strip().splitlines() == [
                f"dfk: error: cannot reach the tracking server {uri}: [Errno 111] Connection refused "
                "(check MLFLOW_TRACKING_URI or --tracking-uri)"]
        assert CliRunner().invoke(app, [f"--tracking-uri={uri}", "params"]).exit_code == 0  # needs no server


def test_a_tracking_server_lost_mid_command_is_one_line():
    from mlflow.exceptions import MlflowException

    from dfk.errors import server_refusal

    lost = MlflowException("API request to http://mlflow.internal:5000/api/2.0/mlflow/runs/log-batch failed with "
                           "exception HTTPConnectionPool(host='mlflow.internal', port=5000): Max retries exceeded")
    assert server_refusal(lost) == ("the tracking server stopped answering (http://mlflow.internal:5000/api/2.0/mlflow/"
                                    "runs/log-batch); the runs it holds are as it last saved them")
    assert server_refusal(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")) is None
