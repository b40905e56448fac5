"""Pipelines: each step an MLflow run under the pipeline's run, a finished step with the same inputs
reused, a failed pipeline resumed at the step that failed, --force redoing everything."""

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from dfk.cli import app
from dfk.config import TrainConfig
from dfk.runs import steps as steps_lib
from dfk.runs.steps import KEY, REUSED, RAN, STEP, StepKey, code_version, pipeline

TINY = ["--archs", "cnn", "-P", "image_size=32", "-P", "epochs=1", "-P", "batch_size=8", "-P", "weights=none",
        "-P", "gradcam_images=0", "--perturb", "none"]


def step_runs(entry_point: str, status: str | None = None):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`{STEP}` = '{entry_point}'")
    return [r for r in runs if status is None or r.info.status == status]


def main_parents():
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="tags.pipeline = 'main'",
                              order_by=["attributes.start_time ASC"])
    return runs


# ----------------------------------------------------------------------------- the mechanism, no training
def test_a_step_runs_once_and_is_reused_with_the_same_inputs(capsys):
    calls = []

    def body(run_id):
        calls.append(run_id)
        return {"answer": 42}

    with pipeline("demo", "steps") as p:
        first = p.step("synth", {"n": 1}, body, data="fp1")
    with pipeline("demo", "steps") as p:
        again = p.step("synth", {"n": 1}, body, data="fp1")
        parent = p.run_id
    assert calls == [first.run_id] and again.reused and again.run_id == first.run_id
    assert again.outputs == {"answer": "42"}
    assert f"reusing synth run {first.run_id} (finished " in capsys.readouterr().out
    tags = MlflowClient().get_run(parent).data.tags
    assert tags[REUSED] == "synth" and tags[RAN] == ""
    run = MlflowClient().get_run(first.run_id)
    assert run.data.tags["mlflow.parentRunId"] != parent and run.data.tags[STEP] == "synth"
    assert run.data.params == {"n": "1"}

    # Another parameter, other data, other code, or force: the step runs again.
    with pipeline("demo", "steps") as p:
        p.step("synth", {"n": 2}, body, data="fp1")
        p.step("synth", {"n": 1}, body, data="fp2")
    with pipeline("demo", "steps", force=True) as p:
        p.step("synth", {"n": 1}, body, data="fp1")
    assert len(calls) == 4
    assert StepKey.of("synth", {"n": 1}, "fp1").digest != StepKey("synth", {"n": "1"}, "fp1", "other code").digest


def test_a_failed_step_ends_failed_and_runs_again_next_time():
    def boom(run_id):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError), pipeline("demo", "steps") as p:
        done = p.step("first", {}, lambda run_id: {"x": 1})
        p.step("second", {}, boom)
    assert MlflowClient().get_run(p.run_id).info.status == "FAILED"
    (failed,) = step_runs("second")
    assert failed.info.status == "FAILED"
    with pipeline("demo", "steps") as p:
        first = p.step("first", {}, lambda run_id: {"x": 2})
        second = p.step("second", {}, lambda run_id: {"y": 1})
    assert first.reused and first.run_id == done.run_id and first.outputs == {"x": "1"}
    assert not second.reused and MlflowClient().get_run(second.run_id).info.status == "FINISHED"


def test_a_twin_whose_outputs_are_gone_is_not_reused(tmp_path):
    folder = tmp_path / "made"

    def make(run_id):
        folder.mkdir()
        return {"path": str(folder)}

    def there(step):
        return folder.exists()

    with pipeline("demo", "steps") as p:
        p.step("synth", {}, make, usable=there)
    folder.rmdir()
    with pipeline("demo", "steps") as p:
        assert not p.step("synth", {}, make, usable=there).reused
    assert len(step_runs("synth", "FINISHED")) == 2


def test_the_code_version_is_a_digest_of_the_source_files_without_git(tmp_path, monkeypatch):
    pkg = tmp_path / "somepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_version("somepkg")
    assert code_version("somepkg") == before  # once per process
    (pkg / "__init__.py").write_text("X = 2\n")
    code_version.cache_clear()
    assert code_version("somepkg") != before
    assert len(code_version()) == 16


def test_an_mlproject_force_value_is_the_flag():
    from dfk.cli.pipelines import flags_from_values

    assert flags_from_values(["-d", "x", "--force", "true"]) == ["-d", "x", "--force"]
    assert flags_from_values(["--force", "false", "--archs", "cnn"]) == ["--archs", "cnn"]
    assert flags_from_values(["--force", "", "--archs", "cnn"]) == ["--archs", "cnn"]
    assert flags_from_values(["--force", "--archs", "cnn"]) == ["--force", "--archs", "cnn"]
    with pytest.raises(SystemExit):
        flags_from_values(["--force", "maybe"])


# ----------------------------------------------------------------------------- the main job's settings
def test_the_demo_shortening_applies_to_the_builtin_set_alone():
    from dfk.config import NOTEBOOK_IMAGE_SIZE
    from dfk.settings import SETTINGS
    from pipelines.main import configs, describe

    real = {c.arch: c for c in configs(SETTINGS.archs, TrainConfig.from_overrides(dict(data_dir="/data/kaggle")))}
    defaults = TrainConfig()
    assert set(real) == {"srm", "resnet"}
    for cfg in real.values():  # each architecture's own defaults: the notebook's size, full epochs
        assert (cfg.image_size, cfg.epochs, cfg.weights) == (NOTEBOOK_IMAGE_SIZE, defaults.epochs, "auto")
    assert "256 px" in describe(real["resnet"]) and "defaults" in describe(real["resnet"])

    demo = {c.arch: c for c in configs(SETTINGS.archs, TrainConfig())}
    assert (demo["resnet"].epochs, demo["resnet"].image_size) == (1, 32)
    assert (demo["srm"].epochs, demo["srm"].image_size) == (defaults.epochs, 64)
    assert "demo's shortening resnet:epochs=1" in describe(demo["resnet"])
    # An entry's own override wins over the demo's; parameters given for all stay beneath both.
    (own,) = configs("resnet:epochs=3", TrainConfig.from_overrides(dict(epochs=7)))
    assert (own.epochs, own.image_size) == (3, 32)
    assert "epochs=1" not in SETTINGS.archs  # the demo's shortening is named once, in demo_overrides


# ----------------------------------------------------------------------------- the main job, tiny
def test_main_resumes_at_the_failed_step_and_then_reuses_every_step(tiny_data, monkeypatch):
    args = ["main", "-d", str(tiny_data), *TINY]

    def boom(**kwargs):
        raise RuntimeError("injected promote failure")

    with monkeypatch.context() as m:
        m.setattr("dfk.registry.promotion.promote", boom)
        r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "injected" in str(r.exception)
    (trained,) = step_runs("cnn")
    (registered,) = step_runs("register")
    assert trained.info.status == registered.info.status == "FINISHED"
    assert [x.info.status for x in step_runs("promote")] == ["FAILED"]
    assert main_parents()[0].info.status == "FAILED"

    # Resumes at promote: training and register reused.
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"reusing cnn run {trained.info.run_id} (finished " in r.stdout
    assert f"reusing register run {registered.info.run_id}" in r.stdout and "reusing promote" not in r.stdout
    assert len(step_runs("cnn")) == 1 and len(step_runs("promote", "FINISHED")) == 1
    champion = MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    assert champion.run_id == trained.info.run_id

    # Nothing changed: every step reused, nothing trained.
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("reusing ") == 4 and "[dfk] training" not in r.stdout
    last = main_parents()[-1]
    assert last.info.status == "FINISHED"
    assert last.data.tags[REUSED] == "cnn,register,promote,evaluate" and last.data.tags[RAN] == ""
    assert last.data.tags["run_cnn"] == trained.info.run_id
    assert len(step_runs("cnn")) == 1 and len(mlflow.search_runs(search_all_experiments=True, output_format="list",
                                                                 filter_string="tags.arch = 'cnn'")) == 1
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{main_parents()[1].info.run_id}'")
    assert sorted(c.data.tags[STEP] for c in children) == ["evaluate", "promote"]  # the steps the resume ran


@pytest.mark.slow
def test_force_redoes_every_step(tiny_data):
    args = ["main", "-d", str(tiny_data), *TINY]
    assert CliRunner().invoke(app, args).exit_code == 0
    r = CliRunner().invoke(app, [*args, "--force"])
    assert r.exit_code == 0, r.output
    assert "reusing" not in r.stdout
    assert len(step_runs("cnn", "FINISHED")) == 2 and len(step_runs("evaluate", "FINISHED")) == 2
    assert main_parents()[-1].data.tags[RAN] == "cnn,register,promote,evaluate"


# ----------------------------------------------------------------------------- the other pipelines
def test_prepare_synthesises_and_inspects_once(tmp_path):
    from dfk.data.synth import SynthSpec
    from pipelines.prepare import run_prepare

    spec = SynthSpec(train=2, validation=2, test=2, image_size=32)
    first = run_prepare(synth=spec, out=tmp_path / "set")
    assert (tmp_path / "set" / "manifest.json").exists() and first.bad_files == 0 and first.leaks == []
    (inspected,) = step_runs("inspect")
    files = {f.path for f in MlflowClient().list_artifacts(inspected.info.run_id, "data")}
    assert {"data/dataset.json", "data/leakage.json"} <= files
    again = run_prepare(synth=spec, out=tmp_path / "set")
    assert again.fingerprint == first.fingerprint
    assert MlflowClient().get_run(again.parent_run_id).data.tags[REUSED] == "synth,inspect"
    assert len(step_runs("synth")) == 1


@pytest.mark.slow
def test_sweep_registers_and_promotes_its_best_trial_and_reuses_it(tiny_data):
    from dfk.tuning.study import SweepSpec
    from pipelines.sweep import run_sweep

    def spec():
        base = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, epochs=1,
                                               batch_size=8, weights="none", gradcam_images=0))
        return SweepSpec(base=base, n_trials=2, study_name="pipeline")

    r = run_sweep(spec())
    champion = MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    assert str(champion.version) == r.champion_version and champion.run_id == r.best_run_id
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`mlflow.parentRunId` = '{r.sweep_run_id}'")
    assert r.best_run_id in {t.info.run_id for t in trials}
    again = run_sweep(spec())
    assert (again.sweep_run_id, again.registered_version) == (r.sweep_run_id, r.registered_version)
    assert MlflowClient().get_run(again.parent_run_id).data.tags[REUSED] == "tune,register,promote"


@pytest.mark.slow
def test_generalization_scores_held_out_kinds_and_domains(tiny_data, tmp_path):
    from pipelines.generalization import run_generalization

    base = TrainConfig.from_overrides(dict(data_dir=str(tiny_data), image_size=32, epochs=1, batch_size=8,
                                           weights="none", gradcam_images=0))
    kw = dict(archs="cnn", out=tmp_path / "sets", photos="builtin", test=4, leave_out_train=4, kinds=("splice",),
              starts=("none",), few_shot=4)
    (row,) = run_generalization(base, **kw)
    assert {"in_domain", "cross_domain", "splice", "cross_manipulation", "few_shot"} <= set(row)
    assert row["cross_manipulation"] == row["splice"] and 0 <= row["cross_domain"] <= 1 and 0 <= row["few_shot"] <= 1
    assert len(step_runs("cnn")) == 3  # in-domain, without splice, and few-shot
    (again,) = run_generalization(base, **kw)
    assert again == row and len(step_runs("cnn")) == 3
