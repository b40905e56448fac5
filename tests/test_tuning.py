"""Optuna sweeps as a parent MLflow run with child trial runs: pruning, failures, resume, workers."""

import mlflow
import optuna
import pytest
from typer.testing import CliRunner

from dfk.cli import app
from dfk.config import TrainConfig
from dfk.tuning.study import SweepSpec
from dfk.tuning.sweep import tune

SPACE = "learning_rate: {type: float, low: 0.0001, high: 0.01, log: true}\nbatch_size: {type: categorical, choices: [8]}\n" \
        "dense_units: {type: categorical, choices: [16, 32]}\naugment: null\n"


def _spec(tiny_data, tmp_path, **kw):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    base = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, epochs=2,
                                           weights="none", gradcam_images=0))
    return SweepSpec(base=base, space_path=str(space), storage=f"sqlite:///{tmp_path}/optuna.db", **kw)


def _children(parent_id):
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              output_format="list")


def test_a_sweep_is_a_parent_run_with_one_child_per_trial_and_resumes(tiny_data, tmp_path):
    r = tune(_spec(tiny_data, tmp_path, n_trials=3, study_name="s1"))
    parent = mlflow.get_run(r.parent_run_id)
    assert parent.info.status == "FINISHED" and r.states == {"COMPLETE": 3}
    children = _children(r.parent_run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["optuna_state"] for c in children} == {"COMPLETE"}
    assert all("val_auc" in c.data.metrics and "objective" in c.data.metrics for c in children)
    assert parent.data.metrics["best_value"] == pytest.approx(r.best_value)
    assert parent.data.params["best_learning_rate"] and parent.data.tags["best_run_id"] == r.best_run_id
    assert parent.data.params["pruner_settings"] == "n_startup_trials=3, n_warmup_steps=1"
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(r.parent_run_id)}
    plots = {f.path for f in mlflow.MlflowClient().list_artifacts(r.parent_run_id, "plots")}
    assert {"trials.csv", "best.json", "plots"} <= files
    assert {"plots/optimization_history.png", "plots/intermediate_values.png", "plots/parallel_coordinate.png",
            "plots/param_importances.png"} <= plots
    best = mlflow.get_run(r.best_run_id)  # the best trial's run holds the model trained with the best params
    assert float(best.data.params["learning_rate"]) == pytest.approx(r.best_params["learning_rate"])
    assert best.data.params["dense_units"] == str(r.best_params["dense_units"])
    from dfk.serving.detector import load_detector

    detector = load_detector(f"runs:/{r.best_run_id}/model")
    assert detector.image_size == 32 and detector.model.get_layer("dense").units == r.best_params["dense_units"]
    again = tune(_spec(tiny_data, tmp_path, n_trials=2, study_name="s1"))
    assert again.n_trials == 5
    assert len(optuna.load_study(study_name="s1", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == 5


def test_pruned_and_failed_trials_are_marked_and_the_sweep_goes_on(tiny_data, tmp_path, monkeypatch):
    import keras

    fit = keras.Model.fit
    calls = {"n": 0}

    def flaky_fit(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return fit(self, *a, **k)

    monkeypatch.setattr(keras.Model, "fit", flaky_fit)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 2)
    r = tune(_spec(tiny_data, tmp_path, n_trials=4, study_name="s2"))
    assert r.states == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}
    by_trial = {c.data.tags["optuna_trial"]: c for c in _children(r.parent_run_id)}
    assert (by_trial["1"].info.status, by_trial["1"].data.tags["optuna_state"]) == ("FAILED", "FAIL")
    assert (by_trial["2"].info.status, by_trial["2"].data.tags["optuna_state"]) == ("KILLED", "PRUNED")
    assert by_trial["2"].data.metrics["epochs_trained"] == 1
    assert by_trial["0"].info.status == by_trial["3"].info.status == "FINISHED"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("dropout: [0.1, 0.5", "not valid YAML"),
        ("epochz: {type: float, low: 1, high: 2}", "unknown parameter 'epochz'"),
        ("arch: {type: categorical, choices: [cnn]}", "unknown parameter 'arch'"),
        ("dropout: {type: float, low: 0.5, high: 0.1}", "low < high"),
        ("dropout: {type: gaussian}", "needs type"),
    ],
)
def test_bad_search_space_is_one_line_and_exit_2(tiny_data, tmp_path, text, fragment):
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    result = CliRunner().invoke(app, ["tune", "-d", str(tiny_data), "--space", str(space), "--n-trials", "1"])
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_two_workers_on_sqlite_run_exactly_n_trials(tiny_data, tmp_path):
    # No pruner: with two workers, which trials finish before another is judged depends on timing.
    r = tune(_spec(tiny_data, tmp_path, n_trials=4, study_name="w", workers=2, pruner="none"))
    from dfk.tuning.study import SURPLUS_ATTR

    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path}/optuna.db")
    ran = [t for t in study.trials if not t.user_attrs.get(SURPLUS_ATTR)]  # a start both took at once: not run
    assert len(ran) == 4 and {t.state.name for t in ran} == {"COMPLETE"}
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 4  # the two workers drew different trials
    children = _children(r.parent_run_id)
    assert sorted(int(c.data.tags["optuna_trial"]) for c in children) == sorted(t.number for t in ran)
    assert mlflow.get_run(r.parent_run_id).info.status == "FINISHED"


def test_ctrl_c_stops_cleanly_leaving_finished_trials_and_closed_runs(tiny_data, tmp_path, monkeypatch):
    import keras

    fit = keras.Model.fit
    calls = {"n": 0}

    def interrupted_fit(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fit(self, *a, **k)

    monkeypatch.setattr(keras.Model, "fit", interrupted_fit)
    spec = _spec(tiny_data, tmp_path, n_trials=4, study_name="s3")
    with pytest.raises(KeyboardInterrupt):
        tune(spec)
    study = optuna.load_study(study_name="s3", storage=spec.storage)
    assert [t.state.name for t in study.trials][0] == "COMPLETE" and len(study.trials) == 2
    runs = mlflow.search_runs(experiment_names=["dfk-tune"], output_format="list")
    status = {r.data.tags.get("optuna_trial", "parent"): r.info.status for r in runs}
    assert status == {"parent": "KILLED", "0": "FINISHED", "1": "KILLED"}


@pytest.mark.parametrize("direction, epochs, reported", [
    ("maximize", [0.6, 0.55, float("nan"), 0.7, 0.65], [0.6, 0.6, float("nan"), 0.7, 0.7]),
    ("minimize", [0.7, 0.9, 0.5, 0.6], [0.7, 0.7, 0.5, 0.5]),
])
def test_the_pruner_is_fed_each_trials_best_value_so_far(direction, epochs, reported):
    from dfk.tuning.trials import best_so_far_pruning

    study = optuna.create_study(direction=direction, pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    callback = best_so_far_pruning(trial, "val_auc", direction)
    for epoch, value in enumerate(epochs):
        callback.on_epoch_end(epoch, {"val_auc": value, "loss": 0.5})
    got = [study.trials[0].intermediate_values[e] for e in range(len(epochs))]
    assert got == pytest.approx(reported, nan_ok=True)


def test_a_trial_behind_the_completed_trials_best_so_far_is_pruned():
    # The completed trial peaked at 0.8 in epoch 1 and dipped to 0.6 in epoch 2, the first judged.
    # Fed raw values, the pruner would keep a trial at 0.7 there (above 0.6); fed best-so-far values
    # it stops it, since that trial would end below the completed one.
    from dfk.tuning.trials import best_so_far_pruning

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    done = study.ask()
    callback = best_so_far_pruning(done, "val_auc", "maximize")
    for epoch, value in enumerate([0.5, 0.8, 0.6]):
        callback.on_epoch_end(epoch, {"val_auc": value})
    study.tell(done, 0.8)
    late = study.ask()
    callback = best_so_far_pruning(late, "val_auc", "maximize")
    callback.on_epoch_end(0, {"val_auc": 0.55})
    callback.on_epoch_end(1, {"val_auc": 0.65})
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        callback.on_epoch_end(2, {"val_auc": 0.7})


def test_the_default_median_pruner_waits_for_three_trials_and_the_first_tenth_of_the_epochs():
    from dfk.tuning.study import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", epochs=20))

    def run(curve):
        """Feed one trial its curve; the epoch (step) it was stopped at, or None."""
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return step
        study.tell(trial, max(curve))
        return None

    good, bad = [0.6 + 0.01 * e for e in range(20)], [0.5] * 20
    assert run(bad) is None and run(good) is None  # one and two trials finished: nothing is judged
    assert run(good) is None
    # Three finished: a trial behind them is stopped at epoch 2 (steps 0 and 1 are the first tenth).
    assert run(bad) == 2
    assert run(good) is None
    assert run([0.5, 0.5, 0.9] + [0.6] * 17) is None  # its best so far keeps it above the median


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--pruner", "percentile"], "unknown pruner 'percentile'; choose from median, hyperband, none"),
        (["--objective", "val_f2"], "unknown objective 'val_f2'"),
        (["--direction", "up"], "direction must be maximize or minimize"),
        (["--n-trials", "0"], "n_trials must be at least 1"),
        (["--workers", "0"], "workers must be at least 1"),
    ],
)
def test_bad_sweep_options_are_one_line_and_exit_2(tiny_data, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tune", "-d", str(tiny_data), *args])
    assert result.exit_code == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "optuna.db").exists()
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_storage_passwords_never_reach_a_param_or_the_terminal():
    from dfk.tuning.study import redact

    assert redact("postgresql+psycopg://alice:s3cret@db:5432/optuna") == "postgresql+psycopg://***@db:5432/optuna"
    assert "p@ss" not in redact("postgresql://u:p@ss@h/db") and redact("postgresql://u:p@ss@h/db").endswith("@h/db")
    assert redact("sqlite:////data/a@b/optuna.db") == "sqlite:////data/a@b/optuna.db"  # a path, no credentials


def test_default_study_storage_sits_beside_the_tracking_store(tmp_path, monkeypatch):
    from dfk.tuning.study import default_storage

    assert default_storage(f"sqlite:///{tmp_path}/store/mlflow.db") == f"sqlite:///{tmp_path}/store/optuna.db"
    assert default_storage(f"file://{tmp_path}/files/mlruns") == f"sqlite:///{tmp_path}/files/optuna.db"
    monkeypatch.setenv("DFK_CACHE", str(tmp_path / "cache"))
    assert default_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path}/cache/optuna.db"



@pytest.mark.slow
def test_a_dead_workers_trial_is_failed_retried_and_its_run_ended_killed(tiny_data, tmp_path):
    """Two machines on one study; one is SIGKILLed mid-trial. The other fails the silent trial (no
    heartbeat), ends its MLflow run KILLED, runs it again and ends the sweep with exactly n_trials."""
    import os
    import signal
    import subprocess
    import time

    from bench.localserver import venv_tool
    from dfk.settings import SETTINGS
    from dfk.tuning.study import RUN_ATTR, SURPLUS_ATTR, WORKER_ATTR

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [venv_tool("dfk"), "tune", "-d", str(tiny_data), "--arch", "cnn", "-P", "epochs=4", "-P", "image_size=32",
           "-P", "weights=none", "-P", "gradcam_images=0", "--n-trials", "3", "--study-name", "k", "--space", str(space),
           "--pruner", "none"]
    env = {**os.environ, "DFK_OPTUNA_STORAGE": storage}
    procs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        p = subprocess.Popen(cmd, env=env, cwd=tmp_path / name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs[p.pid] = p
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name="k", storage=storage).trials
        except Exception:  # not created yet
            continue
        for t in trials:
            pid = int(t.user_attrs.get(WORKER_ATTR, ":0").rsplit(":", 1)[1])
            if t.state.name == "RUNNING" and t.user_attrs.get(RUN_ATTR) and pid in procs:
                victim = (t, procs.pop(pid))
                break
    assert victim is not None, "no trial started"
    killed, proc = victim
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivor = next(iter(procs.values()))
    assert survivor.wait(timeout=600) == 0

    study = optuna.load_study(study_name="k", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed.number].state.name == "FAIL"
    retries = [t for t in study.trials if killed.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    ran = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED") and not t.user_attrs.get(SURPLUS_ATTR)]
    assert len(ran) == 3
    dead = mlflow.get_run(killed.user_attrs[RUN_ATTR])
    assert dead.info.status == "KILLED" and dead.data.tags["optuna_state"] == "FAIL" and "stale" in dead.data.tags
    assert dead.data.metrics.get("epochs_trained", 0) < 4  # what it logged before dying is kept
    parent = mlflow.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    assert not mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'",
                                  output_format="list")
    assert SETTINGS.heartbeat_interval <= 10  # the test's budget: the trial is judged dead after 2 beats


def test_a_worker_under_mlflow_run_joins_the_sweep_in_progress(tiny_data, tmp_path, monkeypatch):
    """The sweep's first process started it (parent run, study attributes); another one, started by
    ``mlflow run -e tune``, joins: its trials hang under the sweep's parent, its own entry run only
    points there, and being the last it summarises and ends the parent."""
    from dfk.tuning.study import _create_or_load, join_or_start

    spec = _spec(tiny_data, tmp_path, n_trials=1, study_name="j")
    spec.validate()
    study, created = _create_or_load(spec)
    leader = join_or_start(spec, study, created)
    assert not leader.joined and mlflow.get_run(leader.parent_run_id).info.status == "RUNNING"
    entry = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name("Default").experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", entry)
    r = tune(_spec(tiny_data, tmp_path, n_trials=5, study_name="j"))  # the sweep's own count (1) stands
    assert r.parent_run_id == leader.parent_run_id and r.states == {"COMPLETE": 1}
    children = _children(leader.parent_run_id)
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    parent, pointer = mlflow.get_run(leader.parent_run_id), mlflow.get_run(entry)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 1
    assert pointer.info.status == "FINISHED" and pointer.data.tags["sweep_parent_run_id"] == leader.parent_run_id
    assert not _children(entry)


def test_a_worker_with_other_settings_cannot_join_a_sweep(tiny_data, tmp_path):
    from dfk.errors import UserError
    from dfk.tuning.study import _create_or_load, join_or_start

    spec = _spec(tiny_data, tmp_path, n_trials=2, study_name="m")
    spec.validate()
    study, created = _create_or_load(spec)
    leader = join_or_start(spec, study, created)
    mlflow.MlflowClient().log_param(leader.parent_run_id, "objective", "val_auc")
    with pytest.raises(UserError, match="has objective val_auc; join it with the same settings"):
        tune(_spec(tiny_data, tmp_path, n_trials=2, study_name="m", objective="val_loss"))
    assert not _children(leader.parent_run_id)
