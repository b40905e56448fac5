"""Commands that train: ``dfk train``, ``dfk tune``, ``dfk main``, and the lists ``dfk params`` / ``dfk models``."""

from __future__ import annotations

import contextlib
from typing import Annotated, Optional

import typer

from dfk.cli.common import (TRAINING_OVERRIDES, ArchOption, DataDirOption, ObjectiveOption, ParamOption, PrunerOption,
                            WorkersOption, _quiet_tensorflow, _unset, app, parse_overrides, user_errors)
from dfk.config import TrainConfig
from dfk.settings import SETTINGS


@app.command(context_settings=TRAINING_OVERRIDES)
@user_errors
def train(
    ctx: typer.Context,
    arch: ArchOption = None,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    experiment: Annotated[Optional[str], typer.Option(help=f"MLflow experiment name (default: {SETTINGS.experiment}).")] = None,
    resume: Annotated[Optional[str], typer.Option(
        metavar="RUN_ID", help="Continue this killed or failed run from its last checkpointed epoch, with its own "
                               "parameters (other parameters given are ignored).")] = None,
) -> None:
    """Train one architecture and log a complete MLflow run."""
    overrides = parse_overrides(param, ctx)
    _quiet_tensorflow()
    from dfk.training.trainer import train as run_training

    if resume := _unset(resume):
        from dfk.training.checkpoints import resumable

        _, cfg, _ = resumable(resume)
        asked = {**overrides, **{k: v for k, v in (("arch", arch), ("data_dir", data_dir)) if v}}
        given = TrainConfig.from_overrides(asked).to_dict() if asked else {}
        default = TrainConfig.from_overrides({"arch": given.get("arch", cfg.arch)}).to_dict()
        # what differs from the run and from the default (mlflow run passes every default explicitly)
        if ignored := sorted(k for k, v in given.items() if k in asked and v != getattr(cfg, k) and v != default[k]):
            typer.echo(f"dfk: resuming run {resume} with its own parameters; ignoring {', '.join(ignored)}", err=True)
    else:
        cfg = TrainConfig.from_overrides(overrides, arch=arch, data_dir=data_dir)
    from dfk.runs.entry import entry_run
    from dfk.runs.liveness import Heartbeat

    entry = entry_run() if resume else None  # mlflow run's own run, left open beside it

    if entry:
        import mlflow

        mlflow.MlflowClient().set_tag(entry, "dfk.resumed_run_id", resume)  # it points at the run it goes on with
    with Heartbeat(entry) if entry else contextlib.nullcontext():
        result = run_training(cfg, experiment=experiment, resume_run_id=resume)
    import mlflow

    uri = mlflow.get_tracking_uri()
    typer.echo(f"Finished run {result.run_id} in {uri}")
    if uri.startswith(("http://", "https://")):
        typer.echo(f"See it in the MLflow UI: {uri}")
    else:
        typer.echo(f"See it in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")


@app.command()
def params() -> None:
    """List every training parameter with its default and why."""
    import dataclasses

    from dfk.config import AUTO, AUTO_FIELDS, field_comments

    comments = field_comments()
    for f in dataclasses.fields(TrainConfig):
        default = AUTO if f.default is None and f.name in AUTO_FIELDS else f.default
        typer.echo(f"{f.name:<18} {str(default):<10} {comments.get(f.name, '')}")


@app.command()
def models() -> None:
    """List the architectures in the registry."""
    from dfk.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        typer.echo(f"{name:<14} {spec.description} (min {spec.min_image_size} px, learning rate {spec.learning_rate:g})")


@app.command("main", context_settings=TRAINING_OVERRIDES)
@user_errors
def main_cmd(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    archs: Annotated[Optional[str], typer.Option(
        help="Comma-separated architectures to train; arch:key=value overrides a parameter for one. "
             f"Default: {SETTINGS.archs} (on the built-in set shortened by {SETTINGS.demo_overrides}).")] = None,
    perturb: Annotated[str, typer.Option(help="Robustness check of the champion: default, all, none or a list.")] = SETTINGS.perturb,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the training runs.")] = SETTINGS.experiment,
    force: Annotated[bool, typer.Option("--force", help=(
        "Redo every step; by default a step that already finished with the same parameters, data and code "
        "is reused."))] = False,
) -> None:
    """The whole job: train each arch, register the best, promote behind the gate, check robustness."""
    from pipelines.main import configs, run_main

    base = TrainConfig.from_overrides(parse_overrides(param, ctx), data_dir=data_dir)
    archs = archs or SETTINGS.archs
    configs(archs, base)  # bad entries fail here, before TensorFlow starts
    _quiet_tensorflow()
    r = run_main(base, archs, experiment, perturb, force)
    typer.echo(f"trained: {', '.join(f'{a} {rid}' for a, rid in r.run_ids.items())}"
               + (f" (reused steps: {', '.join(r.reused)})" if r.reused else ""))
    typer.echo(f"champion: {r.champion_uri} (version {r.champion_version}); robustness run {r.evaluation_run_id}")
    typer.echo(f"serve it: mlflow models serve -m {r.champion_uri} --env-manager local -p 5001")
    typer.echo(f"see it:   dfk app {r.champion_uri}   (then open http://127.0.0.1:{SETTINGS.app_port})")


# ----------------------------------------------------------------------------- tuning
@app.command(context_settings=TRAINING_OVERRIDES)
@user_errors
def tune(
    ctx: typer.Context,
    arch: ArchOption = None,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    n_trials: Annotated[int, typer.Option(help=(
        "Trials the sweep adds to the study (joining a sweep in progress: that sweep's count stands)."))] = SETTINGS.n_trials,
    objective: ObjectiveOption = SETTINGS.objective,
    direction: Annotated[Optional[str], typer.Option(help="maximize or minimize (default: minimize for losses).")] = None,
    pruner: PrunerOption = SETTINGS.pruner,
    study_name: Annotated[Optional[str], typer.Option(help=(
        "Resume this study (or start it), or join its sweep in progress from another machine on the same "
        "storage; default: a new one."))] = None,
    storage: Annotated[Optional[str], typer.Option(envvar="DFK_OPTUNA_STORAGE", help=(
        "Optuna storage URL (or DFK_OPTUNA_STORAGE; under mlflow run use that: a -P value is logged as a "
        "run parameter, password included); default: optuna.db beside the tracking store."))] = None,
    space: Annotated[Optional[str], typer.Option(help="YAML file overriding the search space.")] = None,
    workers: WorkersOption = SETTINGS.workers,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the sweep.")] = SETTINGS.tune_experiment,
) -> None:
    """Optuna sweep: one parent MLflow run, each trial a child run; pruned and failed trials marked."""
    base = TrainConfig.from_overrides(parse_overrides(param, ctx), arch=arch, data_dir=data_dir)
    _quiet_tensorflow()
    from dfk.tuning.study import SweepSpec
    from dfk.tuning.sweep import tune as run_tune

    spec = SweepSpec(base=base, n_trials=n_trials, objective=objective, direction=direction or "", pruner=pruner,
                     study_name=study_name or "", storage=storage or "", space_path=_unset(space), workers=workers,
                     experiment=experiment)
    r = run_tune(spec)
    typer.echo(f"study {r.study_name}: {r.n_trials} trials " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(r.states.items())))
    if r.best_value is not None:
        typer.echo(f"best {objective} {r.best_value:.4f} with {r.best_params} (run {r.best_run_id})")
    typer.echo(f"parent run {r.parent_run_id} in experiment {r.experiment!r}; study storage {r.storage}")
