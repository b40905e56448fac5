"""Register the best run, promote behind a gate, predict from the registry."""

import csv
import os
import time

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from dfk.cli import app
from dfk.config import TrainConfig
from dfk.errors import UserError
from dfk.registry.promotion import promote, register_best
from dfk.settings import SETTINGS
from dfk.training.trainer import train


def _train(data, experiment, seed):
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=32, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0, seed=seed))
    return train(cfg, experiment=experiment)


@pytest.fixture
def two_versions(tiny_data):
    a = _train(tiny_data, "a", 1)
    b = _train(tiny_data, "b", 2)
    first = register_best("a")
    second = register_best("b")
    return a, b, first, second


def test_register_tags_the_version_and_sets_aliases(two_versions):
    a, b, first, second = two_versions
    client = MlflowClient()
    assert (first.version, first.aliases, first.run_id) == ("1", ["challenger", "champion"], a.run_id)
    assert (second.version, second.aliases) == ("2", ["challenger"])
    v = client.get_model_version("deepfake-detector", "2")
    assert v.tags["arch"] == "cnn" and v.tags["run_id"] == b.run_id and len(v.tags["dataset_fingerprint"]) == 16
    assert float(v.tags["test_roc_auc"]) == pytest.approx(b.metrics["test_roc_auc"], abs=1e-6)
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "1"
    again = register_best("b")
    assert (again.version, again.created) == ("2", False)


def test_promotion_gate_never_promotes_a_model_that_is_not_better(two_versions, tiny_data):
    client = MlflowClient()
    d = promote(data_dir=str(tiny_data), margin=1.0)  # nothing gains a whole ROC-AUC point
    assert not d.promoted and d.champion == "1"
    v2 = client.get_model_version("deepfake-detector", "2")
    assert "kept as challenger" in v2.description and v2.tags["promotion_decision"] == "kept as challenger"
    before = (v2.description, v2.tags)
    d2 = promote(data_dir=str(tiny_data), margin=1.0)
    v2 = client.get_model_version("deepfake-detector", "2")
    assert not d2.promoted and (v2.description, v2.tags) == before
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "1"


def _auc_on_own_test_split(version: str, data) -> float:
    """The version's test ROC-AUC worked out apart from promote: its own scoring of the same split."""
    from dfk.data.scan import scan
    from dfk.evaluation.scoring import score_folder
    from dfk.serving.detector import load_detector

    return score_folder(load_detector(f"models:/deepfake-detector/{version}"), scan(data)).clean.metrics["roc_auc"]


def test_promotion_judges_both_versions_on_the_same_split_at_the_default_margin(two_versions, tiny_data):
    """Two trained models: the gain promote reports is what the two versions score apart from it,
    and the default gate decides by it."""
    gain = _auc_on_own_test_split("2", tiny_data) - _auc_on_own_test_split("1", tiny_data)
    d = promote()
    assert d.metrics["challenger"]["roc_auc"] - d.metrics["champion"]["roc_auc"] == pytest.approx(gain, abs=1e-9)
    assert d.metrics["margin"] == SETTINGS.promotion_margin and d.promoted is (gain >= SETTINGS.promotion_margin)
    champion = str(MlflowClient().get_model_version_by_alias("deepfake-detector", "champion").version)
    assert champion == ("2" if d.promoted else "1")
    if d.promoted:  # a second run has nothing left to do
        again = promote()
        assert not again.promoted and again.reason == "challenger is already the champion"


def test_promotion_scores_the_test_split_the_challenger_was_trained_with(tmp_path, tiny_data, monkeypatch):
    """A flat folder trained with seed 7: promotion (no --data-dir) scores exactly that run's test
    split, never a fresh default split that would hold the run's training images."""
    import shutil

    from dfk.evaluation import scoring
    from dfk.data.scan import scan

    flat = tmp_path / "flat"
    for split in ("Train", "Validation", "Test"):
        for cls in ("Fake", "Real"):
            (flat / cls).mkdir(parents=True, exist_ok=True)
            for f in (tiny_data / split / cls).iterdir():
                shutil.copy(f, flat / cls / f"{split}_{f.name}")
    for experiment in ("a", "b"):
        _train(flat, experiment, 7)
        register_best(experiment)
    scored = []
    real_score = scoring.score_folder
    monkeypatch.setattr(scoring, "score_folder", lambda det, index, *a, **k: scored.append(index) or real_score(det, index, *a, **k))

    d = promote(margin=1.0)

    own, default = scan(flat, seed=7), scan(flat)
    assert len(scored) == 2 and all(ix.spec.seed == 7 for ix in scored)
    assert all(set(ix.paths("test")) == set(own.paths("test")) for ix in scored)
    assert not set(scored[0].paths("test")) & set(own.paths("train") + own.paths("validation"))
    assert set(default.paths("test")) & set(own.paths("train"))  # what the default split would have scored
    assert f"the test split of {flat} (val_split 0.2, seed 7), as the model's run split it" in d.data
    v2 = MlflowClient().get_model_version("deepfake-detector", "2")
    assert v2.tags["promotion_data"] == str(flat) and v2.tags["promotion_seed"] == "7"
    r = CliRunner().invoke(app, ["promote", "--margin", "1"])
    assert r.exit_code == 0 and f"judged on the test split of {flat} (val_split 0.2, seed 7)" in r.stdout


def test_runs_of_mlflow_runs_default_experiment_are_found_with_no_flag(tiny_data):
    """`mlflow run . -e cnn` without --experiment-name puts the run in Default; register and compare find it."""
    a = _train(tiny_data, "Default", 3)
    runner = CliRunner()
    r = runner.invoke(app, ["register"])
    assert r.exit_code == 0, r.output
    assert MlflowClient().get_model_version_by_alias("deepfake-detector", "challenger").run_id == a.run_id
    r = runner.invoke(app, ["compare", "--format", "csv"])
    assert r.exit_code == 0 and f"{a.run_id[:8]},Default," in r.stdout
    r = runner.invoke(app, ["register", "--experiment", "dfk"])  # scoped to one experiment on request
    assert r.exit_code == 2 and "experiment 'dfk' does not exist" in r.stderr


def test_register_chooses_among_the_runs_on_the_newest_runs_data(tiny_data, tmp_path):
    from dfk.data.synth import SynthSpec, generate

    other = generate(SynthSpec(train=12, validation=6, test=6, image_size=64, seed=9), tmp_path / "other")
    demo = _train(tiny_data, "dfk", 1)  # say, the demo's run on the built-in set
    MlflowClient().log_metric(demo.run_id, "test_roc_auc", 0.99)  # scores high on its own test split
    mine = _train(other, "Default", 2)  # then the user's first run on their own folder
    MlflowClient().log_metric(mine.run_id, "test_roc_auc", 0.6)
    r = CliRunner().invoke(app, ["register"])
    assert r.exit_code == 0, r.output
    assert f"(run {mine.run_id})" in r.stdout and f"the best of the runs on {other}" in r.stdout
    again = _train(tiny_data, "dfk", 3)  # back on the first data: its best run is the older one
    MlflowClient().log_metric(again.run_id, "test_roc_auc", 0.5)
    assert register_best().run_id == demo.run_id


def test_register_without_runs_is_a_clear_error():
    with pytest.raises(UserError, match="experiment 'nothing' does not exist"):
        register_best("nothing")
    with pytest.raises(UserError, match="no finished training run with a model and metric 'test_roc_auc' in any experiment"):
        register_best()
    result = CliRunner().invoke(app, ["promote", "--name", "nobody"])
    assert result.exit_code == 2 and "has no 'challenger' version" in result.stderr


def test_predict_scores_folders_to_csv_and_skips_unreadable(trained_model, tiny_data, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "Test", folder)
    (folder / "Fake" / "broken.png").write_bytes(b"\x89PNG nope")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", str(trained_model), str(folder), "--out", str(out), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"fake", "real"}
    assert all(0 <= float(r["probability_fake"]) <= 1 for r in rows)
    assert "broken.png" in result.stderr
    model = mlflow.pyfunc.load_model(str(trained_model))
    import pandas as pd

    first = next(r for r in rows)
    expected = model.predict(pd.DataFrame({"image": [open(first["path"], "rb").read()]})).probability_fake[0]
    assert float(first["probability_fake"]) == pytest.approx(expected, abs=1e-5)


def _fake_versions(monkeypatch, quality: dict[str, float], rng=None):
    """Registered model ``m`` whose versions' scoring is instant: version -> ROC-AUC; ``rng`` adds
    random pauses at every step of promote, so that two promotes interleave differently every time."""
    from tests.fakes import create_versions, scoring_patches

    client = mlflow.MlflowClient()
    create_versions(client, "m", len(quality))
    pause = (lambda: time.sleep(rng.random() * 0.05)) if rng else (lambda: None)
    for module, name, value in scoring_patches(quality, pause):
        monkeypatch.setattr(module, name, value)
    return client


@pytest.mark.parametrize("seed", range(20))
def test_two_promotes_racing_never_leave_a_worse_champion(monkeypatch, seed):
    import random
    import threading

    from dfk.registry.promotion import promote

    quality = {"1": 0.80, "2": 0.95, "3": 0.90}
    client = _fake_versions(monkeypatch, quality, random.Random(seed))
    client.set_registered_model_alias("m", "champion", "1")
    errors = []

    def contender(version):
        try:
            promote("m", version=version, margin=0.01)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(v,)) for v in random.Random(seed).sample(["2", "3"], 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)  # a hang guard, not a speed limit
    assert not errors
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"  # the best, whoever came first
    decided = {v: client.get_model_version("m", v).tags.get("promotion_decision") for v in ("2", "3")}
    assert decided["2"] == "promoted to champion"
    assert not [m for m in client.search_registered_models() if m.name.endswith(".promotion-lock")]


@pytest.mark.parametrize("lead", ["2", "3"])
def test_two_dfk_promote_processes_racing_leave_the_better_champion(tmp_path, lead):
    """`dfk promote --version 2` and `--version 3`, two processes on one SQLite store, both judging
    against champion v1 before either moves it (tests/test_team.py races them on a server)."""
    from tests.fakes import RACE_OUTCOMES, create_versions, race_two_promotes

    client = mlflow.MlflowClient()
    create_versions(client, "m", 3)
    client.set_registered_model_alias("m", "champion", "1")
    said = race_two_promotes(dict(os.environ), lead, tmp_path)
    assert said in RACE_OUTCOMES.values(), said  # whichever came first, the later one judged against it
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    assert client.get_model_version("m", "2").tags["promotion_decision"] == "promoted to champion"
    assert not [m.name for m in client.search_registered_models() if m.name != "m"]  # no lock left behind


def test_a_promote_that_crashed_between_its_record_and_the_alias_is_finished_by_a_rerun(monkeypatch):
    from dfk.registry.promotion import promote

    client = _fake_versions(monkeypatch, {"1": 0.8, "2": 0.9})
    client.set_registered_model_alias("m", "champion", "1")
    client.set_registered_model_alias("m", "challenger", "2")
    real = type(client).set_registered_model_alias

    def crash(self, name, alias, version):
        if alias == "champion":
            raise ConnectionError("the store went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(type(client), "set_registered_model_alias", crash)
    with pytest.raises(ConnectionError):
        promote("m")
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    monkeypatch.setattr(type(client), "set_registered_model_alias", real)
    decision = promote("m")
    assert decision.promoted and str(client.get_model_version_by_alias("m", "champion").version) == "2"
    v2 = client.get_model_version("m", "2")
    assert v2.tags["promotion_decision"] == "promoted to champion" and "0.9000 vs champion v1" in v2.description


def test_a_lock_left_by_a_dead_promote_is_broken(monkeypatch):
    import json as _json
    from dataclasses import asdict, replace

    from dfk.runs.liveness import this_process
    from dfk.registry.promotion import LOCK_SUFFIX, promote

    client = _fake_versions(monkeypatch, {"1": 0.8, "2": 0.9})
    client.set_registered_model_alias("m", "champion", "1")
    dead = replace(this_process(), pid=2**22 + 7)
    client.create_registered_model(f"m{LOCK_SUFFIX}", tags={"holder": _json.dumps(asdict(dead)), "token": "t"})
    assert promote("m", version="2").promoted


def _champion_and_challenger(monkeypatch, champion_auc: float, challenger_auc: float):
    client = _fake_versions(monkeypatch, {"1": champion_auc, "2": challenger_auc})
    client.set_registered_model_alias("m", "champion", "1")
    client.set_registered_model_alias("m", "challenger", "2")
    return client


@pytest.mark.parametrize("challenger_auc, promoted", [
    (0.93, True),  # better by six times the margin
    (0.90 + SETTINGS.promotion_margin / 2, False),  # better, by half the margin: not enough
    (0.90, False),  # as good
    (0.85, False),  # worse
], ids=["better", "better-by-less-than-the-margin", "as-good", "worse"])
def test_dfk_promote_at_its_default_margin_moves_champion_only_to_a_better_model(monkeypatch, challenger_auc, promoted):
    client = _champion_and_challenger(monkeypatch, 0.90, challenger_auc)
    r = CliRunner().invoke(app, ["promote", "--name", "m"])  # no --margin: SETTINGS.promotion_margin
    assert r.exit_code == 0, r.output
    gain = challenger_auc - 0.90
    assert r.stdout.startswith(f"{'promoted' if promoted else 'not promoted'}: challenger v2 roc_auc "
                               f"{challenger_auc:.4f} vs champion v1 0.9000: {'+' if gain >= 0 else ''}{gain:.4f} "
                               f"{'>=' if promoted else '<'} margin {SETTINGS.promotion_margin}\n"), r.stdout
    assert f"champion: models:/m@champion (version {'2' if promoted else '1'})" in r.stdout
    assert str(client.get_model_version_by_alias("m", "champion").version) == ("2" if promoted else "1")
    v2 = client.get_model_version("m", "2")
    assert v2.tags["promotion_decision"] == ("promoted to champion" if promoted else "kept as challenger")
    assert v2.tags["promotion_margin"] == str(SETTINGS.promotion_margin) and v2.tags["promotion_against"] == "1"
    assert float(v2.tags["promotion_gain"]) == pytest.approx(gain, abs=1e-6)


@pytest.mark.parametrize("side", ["below", "above"])
def test_the_gate_moves_champion_exactly_when_the_gain_clears_the_margin(monkeypatch, side):
    client = _champion_and_challenger(monkeypatch, 0.80, 0.85)
    margin = 0.05 - 1e-6 if side == "below" else 0.05 + 1e-6  # just cleared / just missed
    d = promote("m", margin=margin)
    assert d.promoted is (side == "below") and d.champion == ("2" if side == "below" else "1")
    assert str(client.get_model_version_by_alias("m", "champion").version) == d.champion


@pytest.mark.parametrize("margin", [-0.01, float("nan")])
def test_a_negative_margin_is_refused_before_anything_moves(monkeypatch, margin):
    client = _champion_and_challenger(monkeypatch, 0.90, 0.85)
    with pytest.raises(UserError, match=f"margin must be 0 or more .*, got {margin}"):
        promote("m", margin=margin)
    r = CliRunner().invoke(app, ["promote", "--name", "m", "--margin", str(margin)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert "promotion_decision" not in client.get_model_version("m", "2").tags
