"""Kills and resumes with real processes and signals: no run is left RUNNING, none loses its epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import mlflow
import pytest

from bench.reliability import (BIN, ROOT, TINY, env as _env, first_epoch, mlflow_run_cmd as _mlflow_run_cmd, pairs,
                               start as _start, train_cmd as _train_cmd, until_all_killed,
                               wait_for_epochs as _wait_for_epochs)


@pytest.mark.parametrize("launcher, signum", [
    ("dfk", signal.SIGTERM), ("dfk", signal.SIGINT),
    pytest.param("mlflow", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("mlflow", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("mlflow", signal.SIGKILL, marks=pytest.mark.slow),
])
def test_a_signal_ends_the_training_run_killed_with_its_epochs_kept(tiny_data, tmp_path, launcher, signum):
    cmd = _train_cmd(tiny_data, 300) if launcher == "dfk" else _mlflow_run_cmd(tiny_data, 300)
    proc = _start(cmd, tmp_path)
    run = _wait_for_epochs(proc, 2)
    proc.send_signal(signum)  # to that one process, as a scheduler or `kill PID` sends it
    proc.wait(timeout=300)  # a hang guard: mlflow run waits for the command to end its run, on a busy machine
    statuses, _ = until_all_killed(grace=300)  # returns once all are KILLED: a hang guard, not a speed limit
    assert set(statuses.values()) == {"KILLED"}, statuses
    curves = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    steps = [m.step for m in curves]
    assert len(steps) >= 2 and steps == list(range(len(steps)))  # every epoch logged before the signal is kept
    if launcher == "mlflow" and signum != signal.SIGKILL:
        # the command under mlflow run ended the entry point's run itself and stopped, far short of the
        # 300 epochs it would have trained as an orphan
        give_up = time.monotonic() + 300  # a hang guard, not a speed limit
        while subprocess.run(["pgrep", "-f", f"dfk train --arch cnn -P data_dir={tiny_data}"]).returncode == 0:
            assert time.monotonic() < give_up, "the command trains on after mlflow run was stopped"
            time.sleep(0.5)
        trained = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss"))
        assert trained < 300 and mlflow.get_run(run.info.run_id).info.status == "KILLED", trained


def test_sigterm_stops_a_sweep_with_its_parent_and_trial_killed(tiny_data, tmp_path):
    cmd = [str(BIN / "dfk"), "tune", "--arch", "cnn", "-d", str(tiny_data), "--n-trials", "3", "--pruner", "none",
           "--study-name", "s", "--experiment", "e", *pairs(("epochs=300", "patience=300", *TINY))]
    proc = _start(cmd, tmp_path)
    _wait_for_epochs(proc, 2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)  # a hang guard, not a speed limit (two test workers share 2 cores)
    assert proc.returncode == 130
    runs = mlflow.search_runs(experiment_names=["e"], output_format="list")
    assert {r.info.status for r in runs} == {"KILLED"} and len(runs) == 2  # the sweep's parent and its trial


def test_a_sigkilled_run_is_ended_killed_by_the_next_command(tiny_data, tmp_path):
    proc = _start(_train_cmd(tiny_data, 300), tmp_path)
    run = _wait_for_epochs(proc, 2)
    proc.kill()  # no handler runs: the run stays RUNNING...
    proc.wait(timeout=30)
    assert mlflow.get_run(run.info.run_id).info.status == "RUNNING"
    out = subprocess.run([str(BIN / "dfk"), "compare", "--experiment", "e"], env=_env(tmp_path), capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    # ...until the next command that opens the store, which says so
    assert f"run {run.info.run_id} (cnn-32px-bs8-lr0.001) was left RUNNING but process {proc.pid}" in out.stderr
    after = mlflow.get_run(run.info.run_id)
    assert after.info.status == "KILLED" and str(proc.pid) in after.data.tags["dfk.orphaned"]
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")) >= 2
    assert mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'").empty


def test_a_sigkilled_run_resumes_where_it_stopped(tiny_data, tmp_path):
    proc = _start(_train_cmd(tiny_data, 6), tmp_path)
    run_id = _wait_for_epochs(proc, 3).info.run_id
    proc.kill()
    proc.wait(timeout=30)
    logged = len(mlflow.MlflowClient().get_metric_history(run_id, "loss"))
    out = subprocess.run(_train_cmd(tiny_data, 6, "--resume", run_id, "-P", "epochs=9"), env=_env(tmp_path),
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ignoring epochs" in out.stderr  # the run goes on with its own parameters
    assert f"resuming run {run_id}" in out.stdout
    first = first_epoch(out.stdout)
    assert first >= logged  # epochs redone: at most the one the kill interrupted
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dfk.resumed"] == "1"
    client = mlflow.MlflowClient()
    for key in ("loss", "val_loss", "accuracy", "val_auc"):  # one point per epoch per curve
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(6)), key
    assert run.data.metrics["epochs_trained"] == 6 and "test_roc_auc" in run.data.metrics
    assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model") is not None
    assert not (tmp_path / "checkpoints" / run_id).exists()  # finished: its checkpoint is gone
    assert len(mlflow.search_runs(experiment_names=["e"])) == 1


def test_resume_restores_the_optimizer_the_schedule_and_the_curves(tiny_data):
    """In one process: a run stopped after epoch 3 of 6 goes on from epoch 4 with its optimizer's step
    count, its early-stopping counters and the curves so far."""
    import keras

    from dfk.training.checkpoints import STATE_FILE, checkpoint_dir, resumable
    from dfk.training.trainer import train
    from tests.test_training import tiny_config

    class StopAfter(keras.callbacks.Callback):
        iterations = 0

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                StopAfter.iterations = int(self.model.optimizer.iterations.numpy())
                raise KeyboardInterrupt

    class Probe(keras.callbacks.Callback):
        seen: dict = {}

        def on_train_begin(self, logs=None):
            Probe.seen = {"iterations": int(self.model.optimizer.iterations.numpy()),
                          "initial_epoch": self.model._initial_epoch}

    cfg = tiny_config("cnn", tiny_data, epochs=6, patience=6, warmup_epochs=0, gradcam_images=0)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAfter()])
    (run,) = mlflow.search_runs(experiment_names=["dfk"], output_format="list")
    assert run.info.status == "KILLED"
    state = json.loads((checkpoint_dir(run.info.run_id) / STATE_FILE).read_text())
    assert sorted(map(int, state["epochs"])) == [0, 1, 2] and "EarlyStopping" in state["callbacks"]["training"]

    _, logged_cfg, _ = resumable(run.info.run_id)
    assert logged_cfg == cfg.replace(mixed_precision="off")  # as resolved on this CPU
    result = train(logged_cfg, callbacks=[Probe()], resume_run_id=run.info.run_id)
    assert result.run_id == run.info.run_id
    assert Probe.seen == {"iterations": StopAfter.iterations, "initial_epoch": 3}
    assert len(result.history["loss"]) == 6 and result.history["loss"][:3] == [state["epochs"][str(e)]["loss"] for e in range(3)]


def test_what_cannot_be_resumed_says_why(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from dfk.cli import app
    from dfk.training.trainer import train
    from tests.test_training import tiny_config

    finished = train(tiny_config("cnn", tiny_data, gradcam_images=0)).run_id
    runner = CliRunner()
    for run_id, why in ((finished, "finished; there is nothing to resume"), ("0" * 32, "no run '" + "0" * 32)):
        out = runner.invoke(app, ["train", "--resume", run_id])
        assert out.exit_code == 2 and why in out.output, out.output
    lost = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name("dfk").experiment_id).info.run_id
    mlflow.MlflowClient().set_terminated(lost, "KILLED")
    out = runner.invoke(app, ["train", "--resume", lost])
    assert out.exit_code == 2 and "has no checkpoint in" in out.output


def test_only_runs_whose_processes_are_all_gone_are_ended():
    from dfk.runs.liveness import HEARTBEAT_PREFIX, end_orphaned_runs, this_process
    from dataclasses import asdict, replace

    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("beats").experiment_id
    me = this_process()
    dead_here = replace(me, pid=2**22 + 7)  # no such pid
    reused = replace(me, pid=1, start="1")  # pid 1 lives, but started at another time than recorded
    elsewhere_fresh = replace(me, host="other-host", boot="b", at=time.time())
    elsewhere_silent = replace(me, host="other-host", boot="b", at=time.time() - 3600)
    cases = {"alive": [me], "dead": [dead_here], "reused": [reused], "fresh": [elsewhere_fresh],
             "silent": [elsewhere_silent], "one of two alive": [dead_here, elsewhere_fresh], "untracked": []}
    ids = {}
    for name, beats in cases.items():
        ids[name] = client.create_run(exp, run_name=name).info.run_id
        for b in beats:
            client.set_tag(ids[name], f"{HEARTBEAT_PREFIX}{b.host}/{b.pid}", json.dumps(asdict(b)))
    ended = {run.info.run_name for run, _ in end_orphaned_runs()}
    assert ended == {"dead", "reused", "silent"}
    assert {n: client.get_run(i).info.status for n, i in ids.items()} == {
        "alive": "RUNNING", "dead": "KILLED", "reused": "KILLED", "fresh": "RUNNING", "silent": "KILLED",
        "one of two alive": "RUNNING", "untracked": "RUNNING"}


def test_an_open_run_carries_this_process_heartbeat():
    from dfk.runs import tracking
    from dfk.runs.liveness import beats, this_process

    with tracking.run("x") as active:
        (beat,) = beats(mlflow.get_run(active.info.run_id).data.tags)
    assert (beat.host, beat.pid) == (this_process().host, os.getpid()) and not beat.gone()


@pytest.mark.slow
def test_mlflow_run_resumes_a_killed_run(tiny_data, tmp_path):
    proc = _start(_train_cmd(tiny_data, 4), tmp_path)
    run_id = _wait_for_epochs(proc, 2).info.run_id
    proc.kill()
    proc.wait(timeout=30)
    out = subprocess.run([str(BIN / "mlflow"), "run", str(ROOT), "-e", "cnn", "--env-manager", "local",
                          "--experiment-name", "e", "-P", f"resume={run_id}"], env=_env(tmp_path), capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {r.info.run_id: r for r in mlflow.search_runs(experiment_names=["e"], output_format="list")}
    (entry,) = [r for i, r in runs.items() if i != run_id]
    assert runs[run_id].info.status == "FINISHED" and entry.info.status == "FINISHED"
    assert entry.data.tags["dfk.resumed_run_id"] == run_id
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss")] == list(range(4))


@pytest.mark.slow
def test_a_two_phase_run_stopped_in_fine_tuning_resumes_in_fine_tuning(tiny_data, tmp_path):
    """Pretrained backbone: phase 1 (head) ends, phase 2 (fine-tuning) is stopped after its first
    epoch; the resume skips phase 1, continues phase 2 at its second epoch with phase 2's own
    counters, and the curves have one point per epoch of both phases."""
    import keras

    from dfk.training.checkpoints import STATE_FILE, checkpoint_dir
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    donor = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    donor.save_weights(path)
    cfg = TrainConfig.from_overrides(dict(arch="efficientnet", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                          epochs=2, patience=1, warmup_epochs=0, weights=str(path), fine_tune_at=5,
                                          fine_tune_epochs=3, gradcam_images=0))

    class StopInPhase2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    class Probe(keras.callbacks.Callback):
        starts: list = []

        def on_train_begin(self, logs=None):
            Probe.starts.append(self.model._initial_epoch)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopInPhase2()])
    (run,) = mlflow.search_runs(experiment_names=["dfk"], output_format="list")
    state = json.loads((checkpoint_dir(run.info.run_id) / STATE_FILE).read_text())
    phase1, phase2 = "phase 1", "phase 2 (last 5 layers)"
    assert set(state["phases_done"]) == {phase1} and state["reached"][phase2] == 3
    assert set(state["callbacks"]) == {phase1, phase2}  # each phase's counters apart
    result = train(cfg.replace(mixed_precision="off"), callbacks=[Probe()], resume_run_id=run.info.run_id)
    ended = state["phases_done"][phase1]
    assert Probe.starts == [ended, 3]  # phase 1 runs no epoch, phase 2 goes on at its second
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_loss")]
    assert steps == list(range(len(steps))) and len(steps) == len(result.history["loss"]) <= ended + 3
    assert mlflow.get_run(result.run_id).info.status == "FINISHED"
