"""Many processes write one SQLite store at once: nothing is lost, nothing fails on a lock."""

import mlflow
import optuna
import pytest

from bench.concurrency import LOCKED, storm


@pytest.mark.slow
def test_four_trainers_and_a_two_worker_sweep_share_one_fresh_sqlite_store(tmp_path):
    from dfk.data.synth import SynthSpec, generate

    data = generate(SynthSpec(train=16, validation=6, test=6, image_size=64, seed=3), tmp_path / "data")
    folder = tmp_path / "store"
    folder.mkdir()  # no mlflow.db yet: every process starts on a fresh store at once
    s = storm(folder, data, trainers=4, workers=2, n_trials=4,
              params=("epochs=3", "patience=3", "image_size=32", "batch_size=8", "gradcam_images=0"))
    assert s.codes == [0] * 6, [out[-2000:] for out, c in zip(s.outputs, s.codes) if c]
    assert s.locked == 0 and not any(LOCKED in out for out in s.outputs)

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    client = mlflow.MlflowClient()
    trained = mlflow.search_runs(experiment_names=["storm"], output_format="list")
    assert len(trained) == 4 and {r.info.status for r in trained} == {"FINISHED"}
    for run in trained:  # every epoch of every run, once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == list(range(int(run.data.metrics["epochs_trained"]))) and "test_roc_auc" in run.data.metrics
    study = optuna.load_study(study_name="storm", storage=f"sqlite:///{folder}/optuna.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    sweep = mlflow.search_runs(experiment_names=["storm-tune"], output_format="list")
    assert {r.info.status for r in sweep} == {"FINISHED"} and len(sweep) == 5  # the parent and 4 trials
    (probe,) = mlflow.search_runs(experiment_names=["probe"], output_format="list")
    assert len(client.get_metric_history(probe.info.run_id, "probe")) == len(s.latencies_ms) > 0
