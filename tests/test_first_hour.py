"""A user's first hour with their own data: a quiet start, the devices TensorFlow sees, the Kaggle
folder as downloaded, `dfk data check`, and `dfk compare` showing each metric under its own name."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfk.cli import app
from dfk.errors import UserError

BIN = Path(sys.executable).parent
runner = CliRunner()


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DFK_VERBOSE")}
    return {**env, **extra}


# ----------------------------------------------------------------------------- quiet start
def test_a_failing_command_prints_one_line_and_no_tensorflow_start_up(tmp_path):
    out = subprocess.run([str(BIN / "dfk"), "train", "-d", str(tmp_path / "nonexistent")], env=_env(),
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"dfk: error: data directory {tmp_path / 'nonexistent'} does not exist; pass a folder with "
        "Train|Validation|Test / Fake|Real / images (or Fake|Real / images, split by --val-split)"]


def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    code = "import dfk, sys; (dfk.set_verbose() if sys.argv[1] == 'v' else None); import tensorflow; print('ok')"
    quiet = subprocess.run([sys.executable, "-c", code, "q"], env=_env(), capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == "ok\n" and quiet.stderr == ""
    if platform.machine() == "x86_64":  # where TensorFlow always announces oneDNN, at any TF_CPP_MIN_LOG_LEVEL
        loud = subprocess.run([sys.executable, "-c", code, "v"], env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert loud.returncode == 0 and "oneDNN custom operations are on" in loud.stderr


def test_verbose_flag_is_decided_before_any_command(monkeypatch):
    monkeypatch.delenv("DFK_VERBOSE", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # restored after the test
    assert runner.invoke(app, ["-v", "params"]).exit_code == 0
    assert os.environ["DFK_VERBOSE"] == "1"


def test_only_the_lines_tensorflow_level_hides_are_dropped():
    from dfk import filter_startup_lines

    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796058584.457603    7954 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory: twice\n"
        "2025-09-17 14:44:05.176998: W external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda\n"
        "E0000 00:00:1758131045.2 3722035 gpu_device.cc:1] a real error\n"
        "F0000 00:00:1758131045.2 3722035 x.cc:1] fatal\n"
        "a line of Python's own\n"
    )
    assert filter_startup_lines(text, 2) == (
        "E0000 00:00:1758131045.2 3722035 gpu_device.cc:1] a real error\n"
        "F0000 00:00:1758131045.2 3722035 x.cc:1] fatal\n"
        "a line of Python's own\n")
    assert filter_startup_lines(text, 0) == text
    assert "Unable to register cuDNN" in filter_startup_lines(text, 1)


# ----------------------------------------------------------------------------- devices
def _fake_nvidia_smi(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0123)'\n")
    smi.chmod(0o755)


@pytest.fixture()
def devices(monkeypatch):
    import tensorflow as tf

    from dfk.training import devices

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow uses a GPU here: there is nothing to warn about")
    monkeypatch.setattr(devices, "_announced", False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return devices


def test_an_nvidia_gpu_tensorflow_cannot_use_is_one_warning_line(devices, tmp_path, monkeypatch, capsys):
    _fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    tags = devices.describe()
    out, err = capsys.readouterr()
    assert out.startswith("[dfk] devices: TensorFlow ") and out.count("\n") == 1
    (warning,) = err.splitlines()
    assert warning.startswith("dfk: warning: this machine has an NVIDIA GPU (NVIDIA H200) but TensorFlow trains "
                              "on the CPU: ") and "pip install -e '.[gpu]'" in warning
    assert tags["dfk.devices.gpus"] == "0" and tags["dfk.devices.nvidia_smi_gpus"] == "1"
    assert tags["dfk.tensorflow.cuda_build"] in ("true", "false")
    devices.describe()  # once per process: a tuning study's trials say nothing more
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("setup", ["no driver", "GPUs hidden on purpose"])
def test_no_warning_without_a_gpu_or_when_it_is_hidden(devices, tmp_path, monkeypatch, capsys, setup):
    if setup == "no driver":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    else:
        _fake_nvidia_smi(tmp_path / "bin")
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    devices.describe()
    assert capsys.readouterr().err == ""


def test_a_logged_model_pins_tensorflow_not_its_cpu_only_build():
    import tensorflow as tf

    from dfk.serving.detector import _requirements

    reqs = _requirements()
    assert f"tensorflow=={tf.__version__}" in reqs and not any(r.startswith("tensorflow-cpu") for r in reqs)


# ----------------------------------------------------------------------------- the Kaggle folder as downloaded
def _download(tiny_data: Path, where: Path) -> Path:
    """The folder the Kaggle archive unpacks to: <where>/Dataset/Train|Validation|Test, beside a stray file."""
    shutil.copytree(tiny_data, where / "Dataset")
    (where / "__MACOSX").mkdir()
    return where


def test_the_kaggle_folder_as_downloaded_is_opened_at_its_data_folder(tiny_data, tmp_path, capsys):
    from dfk.data.scan import scan

    archive = _download(tiny_data, tmp_path / "archive")
    index = scan(archive)
    assert index.root == str(archive / "Dataset") and index.layout == "kaggle"
    assert capsys.readouterr().err == f"dfk: using {archive / 'Dataset'} (the data folder inside {archive})\n"
    nested = tmp_path / "deepfake-and-real-images"  # a chain of single folders is followed
    shutil.move(str(archive), str(nested / "archive"))
    assert scan(nested).root == str(nested / "archive" / "Dataset")


def test_a_wrong_folder_shows_the_layout_expected_and_what_it_holds(tiny_data, tmp_path):
    from dfk.data.scan import scan

    wrong = tmp_path / "photos"
    for name in ("holiday", "family", "Fake_ones"):
        (wrong / name).mkdir(parents=True)
    (wrong / "notes.txt").write_text("x")
    with pytest.raises(UserError) as err:
        scan(wrong)
    message = str(err.value)
    assert "expected Train|Validation|Test / Fake|Real / images" in message and "\n" not in message
    assert message.endswith("found: Fake_ones/, family/, holiday/, notes.txt")
    two = tmp_path / "two"
    shutil.copytree(tiny_data, two / "a")
    shutil.copytree(tiny_data, two / "b")
    with pytest.raises(UserError, match=r"holds several data folders \(a, b\); pass one of them"):
        scan(two)


def test_data_check_says_whether_a_downloaded_folder_will_train(tiny_data, tmp_path):
    archive = _download(tiny_data, tmp_path / "archive")
    (archive / "Dataset" / "Train" / "Fake" / "broken.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["data", "check", str(archive)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"folder: {archive / 'Dataset'}" and "kaggle" in lines[1]
    assert lines[3:6] == [f"{'train':<12}{12:>10}{13:>10}", f"{'validation':<12}{6:>10}{6:>10}",
                          f"{'test':<12}{6:>10}{6:>10}"]
    assert "1 bad among 49 headers read of 49 images" in r.stdout and "broken.jpg" in r.stdout
    assert "smallest class: 6 images" in r.stdout
    assert r.stdout.endswith(f"ok: this folder will train (dfk train -d {archive})\n")

    sampled = runner.invoke(app, ["data", "check", str(archive), "--sample", "2", "--json"])
    report = json.loads(sampled.stdout)
    assert report["headers_read"] == 12 and report["sampled"] and report["will_train"]
    assert report["counts"]["train"] == {"real": 12, "fake": 13}

    for f in (archive / "Dataset" / "Test" / "Real").iterdir():
        f.unlink()
    r = runner.invoke(app, ["data", "check", str(archive)])
    assert r.exit_code == 2 and f"{'test':<12}{0:>10}{6:>10}" in r.stdout
    assert r.stderr.splitlines()[-1] == f"dfk: error: {archive} will not train: no Real images in the test split"


def test_data_check_of_a_wrong_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["data", "check", str(tmp_path / "empty")])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"dfk: error: {tmp_path / 'empty'} has neither Train/Validation/Test nor Fake/Real folders (nor one folder "
        "holding them): expected Train|Validation|Test / Fake|Real / images (or Fake|Real / images, split by "
        "--val-split); found: nothing (an empty folder)"]


# ----------------------------------------------------------------------------- a run, its tags, compare
def test_a_run_records_its_devices_and_compare_shows_its_metrics_under_their_names(tiny_data, tmp_path):
    import mlflow

    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    result = train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                                   epochs=1, weights="none", gradcam_images=0)))
    run = mlflow.get_run(result.run_id)
    assert {"dfk.devices.gpus", "dfk.tensorflow.cuda_build", "dfk.tensorflow.version"} <= set(run.data.tags)

    r = runner.invoke(app, ["compare", "--format", "json", "--chart", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    for metric in ("epochs_trained", "best_val_roc_auc", "test_roc_auc", "test_accuracy", "test_accuracy_at_threshold",
                   "test_eer", "test_log_loss"):
        assert row[metric] == pytest.approx(run.data.metrics[metric]), metric
    assert not {"epochs", "val_auc", "weights"} & set(row)  # no metric shown under another name
    assert row["backbone_weights"] == "random"
    help_text = runner.invoke(app, ["compare", "--help"]).stdout
    assert "logs a comparison run" in help_text and "compare.png" in help_text
