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


@pytest.mark.parametrize("refusal", [
    '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',  # PostgreSQL
    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest",
], ids=["postgresql", "sqlite"])
def test_a_dataset_another_run_logs_at_the_same_moment_is_still_logged(tiny_data, monkeypatch, refusal):
    """MLflow's SQL store checks whether a new dataset exists, then inserts it: of two runs logging it
    into one experiment at once (two sweep workers starting together; the team test hit it), one
    fails on the dataset's key and its insert is rolled back. Its training must not fail for that."""
    from mlflow.exceptions import MlflowException

    from dfk.data.scan import scan
    from dfk.runs.tracking import log_dataset

    real, calls = mlflow.log_input, []

    def raced(dataset, *a, **k):  # the other run's insert lands between this one's check and insert
        calls.append(dataset.digest)
        if len(calls) == 1:
            with mlflow.start_run(nested=True):
                real(dataset, *a, **k)
            raise MlflowException(f"BAD_REQUEST: {refusal}")
        return real(dataset, *a, **k)

    monkeypatch.setattr(mlflow, "log_input", raced)
    index = scan(tiny_data)
    mlflow.set_experiment("race")
    with mlflow.start_run() as run:
        log_dataset(index)
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.digest == index.fingerprint and len(calls) == 2
