"""``python -m dfk.cli.pipelines PIPELINE``: the pipelines' command lines, the MLproject's entry points for them.

``main`` is ``dfk main`` itself. An MLproject passes every parameter a value, so there ``--force``
arrives as ``--force true|false`` and is read as the flag (:func:`flags_from_values`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dfk.cli.common import (TRAINING_OVERRIDES, ArchOption, DataDirOption, ObjectiveOption, ParamOption, PrunerOption,
                            WorkersOption, _quiet_tensorflow, _unset, parse_overrides, user_errors)
from dfk.cli.training import main_cmd
from dfk.config import TrainConfig
from dfk.errors import UserError
from dfk.settings import SETTINGS
from pipelines.generalization import FEW_SHOT, STARTS
from pipelines.pretrain import EXPERIMENT as PRETRAIN_EXPERIMENT
from pipelines.pretrain import PretrainSpec

#: The pre-training's defaults, as PretrainSpec declares them.
_PRETRAIN = PretrainSpec()

app = typer.Typer(name="python -m dfk.cli.pipelines", help="The multi-step workflows; a finished step with the same inputs "
                  "is reused.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command("main", context_settings=TRAINING_OVERRIDES)(main_cmd)

ForceOption = Annotated[bool, typer.Option("--force", help=(
    "Redo every step; by default a step that already finished with the same parameters, data and code is reused."))]


@app.command(context_settings=TRAINING_OVERRIDES)
@user_errors
def sweep(
    ctx: typer.Context,
    arch: ArchOption = None,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    n_trials: Annotated[int, typer.Option(help="Trials the sweep adds to its study.")] = SETTINGS.n_trials,
    objective: ObjectiveOption = SETTINGS.objective,
    pruner: PrunerOption = SETTINGS.pruner,
    study_name: Annotated[Optional[str], typer.Option(help="Resume this study (or start it); default: a new one.")] = None,
    workers: WorkersOption = SETTINGS.workers,
    margin: Annotated[float, typer.Option(min=0.0, help="ROC-AUC the best trial must gain to become champion.")] = SETTINGS.promotion_margin,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the pipeline's runs.")] = SETTINGS.experiment,
    force: ForceOption = False,
) -> None:
    """Optuna sweep, then register its best trial and promote it behind the gate."""
    from dfk.tuning.study import SweepSpec
    from pipelines.sweep import run_sweep

    base = TrainConfig.from_overrides(parse_overrides(param, ctx), arch=arch, data_dir=data_dir)
    _quiet_tensorflow()
    spec = SweepSpec(base=base, n_trials=n_trials, objective=objective, pruner=pruner, study_name=study_name or "",
                     workers=workers)
    r = run_sweep(spec, experiment, margin, force)
    typer.echo(f"best trial run {r.best_run_id}: {SETTINGS.model_name} version {r.registered_version}; "
               f"champion version {r.champion_version}{' (promoted)' if r.promoted else ''}")


@app.command()
@user_errors
def prepare(
    data_dir: DataDirOption = None,
    out: Annotated[Optional[str], typer.Option(help=(
        "Write a synthetic set into this new folder first and inspect that (under mlflow run give an absolute "
        "path); default: inspect DATA_DIR."))] = None,
    train: Annotated[Optional[int], typer.Option(help="Images per class in Train of the synthetic set.")] = None,
    validation: Annotated[Optional[int], typer.Option(help="Images per class in Validation.")] = None,
    test: Annotated[Optional[int], typer.Option(help="Images per class in Test.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed of the synthetic set.")] = None,
    shifted: Annotated[bool, typer.Option(help="Forgery parameters the default set never uses.")] = False,
    val_split: Annotated[float, typer.Option(help="Validation (and test) fraction for flat folders.")] = TrainConfig.val_split,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the pipeline's runs.")] = SETTINGS.experiment,
    force: ForceOption = False,
    faces_from: Annotated[Optional[str], typer.Option(help=(
        "Folder of real and fake videos and photos to cut face crops from into --out (dfk data prepare), "
        "instead of a synthetic set."))] = None,
) -> None:
    """Synthesise a set (with --out), cut face crops from videos (--faces-from, --out) or take a folder, then
    inspect it: counts, bad files, format leakage."""
    import dataclasses

    from dfk.data.synth import SynthSpec
    from pipelines.prepare import run_prepare

    if _unset(faces_from):
        from dfk.data.prepare import PrepareSpec

        if not _unset(out):
            raise UserError("name the folder to write the face crops into (--out)")
        _quiet_tensorflow()
        r = run_prepare(faces=PrepareSpec(faces_from, out, val_split=val_split), val_split=val_split,
                        experiment=experiment, force=force)
        typer.echo(f"{r.data_dir}: {r.faces['faces_written']} face crops of {r.faces['sources']} sources, "
                   f"{len(r.faces['failed'])} files failed; fingerprint {r.fingerprint}, " + (
                       f"warning: {', '.join(r.leaks)} alone tell fakes from reals" if r.leaks else "no format leakage"))
        return
    given = dict(train=train, validation=validation, test=test, seed=seed, shifted=shifted or None)
    spec = dataclasses.replace(SynthSpec(), **{k: v for k, v in given.items() if v is not None}) if _unset(out) else None
    r = run_prepare(data_dir or "builtin", spec, _unset(out), val_split, experiment, force)
    typer.echo(f"{r.data_dir}: fingerprint {r.fingerprint}, {r.bad_files} bad files; "
               + (f"warning: {', '.join(r.leaks)} alone tell fakes from reals" if r.leaks else "no format leakage"))


@app.command(context_settings=TRAINING_OVERRIDES)
@user_errors
def generalization(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    archs: Annotated[str, typer.Option(help="Comma-separated architectures; arch:key=value overrides one.")] = "srm",
    out: Annotated[Optional[str], typer.Option(help="Folder of the synthetic held-out sets; default: beside the tracking store.")] = None,
    photos: Annotated[Optional[str], typer.Option(help=(
        "Folder of photographs for the cross-domain and few-shot sets, or builtin; default: Debian's mate-backgrounds "
        "nature photos, which no training set of dfk uses."))] = None,
    test: Annotated[int, typer.Option(help="Test images per class of every held-out set.")] = 150,
    leave_out_train: Annotated[int, typer.Option(help="Training images per class of each set without one kind.")] = 500,
    starts: Annotated[str, typer.Option(help=(
        "Comma-separated weights each architecture starts from (none: from scratch; dfk: dfk's pre-trained weights)."))] = ",".join(STARTS),
    few_shot: Annotated[int, typer.Option(min=0, help=(
        "Training images per class of the few-shot set (held-out photos and kinds); 0 skips the protocol."))] = FEW_SHOT,
    force: ForceOption = False,
) -> None:
    """In-domain, cross-manipulation (leave one kind out), cross-domain and few-shot ROC-AUC per architecture and start."""
    from pipelines.generalization import EXPERIMENT, run_generalization

    base = TrainConfig.from_overrides(parse_overrides(param, ctx), data_dir=data_dir)
    _quiet_tensorflow()
    chosen = tuple(s.strip() for s in starts.split(",") if s.strip())
    for row in run_generalization(base, archs, _unset(out), _unset(photos), test, leave_out_train, starts=chosen,
                                  few_shot=few_shot, experiment=EXPERIMENT, force=force):
        few = f", few-shot {row['few_shot']:.3f}" if "few_shot" in row else ""
        typer.echo(f"{row['arch']} (weights={row['weights']}): in-domain {row['in_domain']:.3f}, cross-manipulation "
                   f"{row['cross_manipulation']:.3f}, cross-domain {row['cross_domain']:.3f}{few}")


@app.command(context_settings=TRAINING_OVERRIDES)
@user_errors
def pretrain(
    ctx: typer.Context,
    param: ParamOption = None,
    archs: Annotated[str, typer.Option(help="Comma-separated architectures to pre-train; arch:key=value overrides one.")] = _PRETRAIN.archs,
    train: Annotated[int, typer.Option(help="Images per class in the corpus' Train.")] = _PRETRAIN.train,
    validation: Annotated[int, typer.Option(help="Images per class in the corpus' Validation.")] = _PRETRAIN.validation,
    test: Annotated[int, typer.Option(help="Images per class in the corpus' Test.")] = _PRETRAIN.test,
    image_size: Annotated[int, typer.Option(help="Side of the corpus' images, and the size the detectors train at.")] = _PRETRAIN.image_size,
    out: Annotated[Optional[str], typer.Option(help=(
        "Folder to write the weights and manifest.json into; default: dfk's own dfk/models/pretrained."))] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Folder to write the corpus under; default: beside the tracking store.")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the pipeline's runs.")] = PRETRAIN_EXPERIMENT,
    force: ForceOption = False,
) -> None:
    """Pre-train the forensic detectors on a broad synthetic corpus and write the weights dfk ships (weights=dfk)."""
    from pipelines.pretrain import run_pretrain

    base = TrainConfig.from_overrides(parse_overrides(param, ctx))
    spec = PretrainSpec(archs=archs, train=train, validation=validation, test=test, image_size=image_size,
                        out=_unset(out) or "", corpus=_unset(corpus) or "")
    spec.synth_spec().validate()
    _quiet_tensorflow()
    r = run_pretrain(base, spec, experiment, force)
    for arch, entry in r.manifest.items():
        typer.echo(f"{arch}: {r.out / entry['file']} ({entry['bytes']} bytes, sha256 {entry['sha256'][:12]}), "
                   f"test ROC-AUC {entry['test_roc_auc']:.3f}, run {entry['run_id']}")


#: Words a pipeline's MLproject parameter ``force`` may hold (mlflow run gives every parameter a value).
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def flags_from_values(argv: list[str], flags: tuple[str, ...] = ("--force",)) -> list[str]:
    """``argv`` with ``--force true|false`` (how an MLproject entry point passes a yes/no parameter)
    as the command's flag: ``--force`` or nothing; a bare ``--force`` stays."""
    out, rest = [], list(argv)
    while rest:
        word = rest.pop(0)
        if word in flags and rest and not rest[0].startswith("-"):
            value = rest.pop(0).strip().lower()
            if value not in TRUE + FALSE:
                import sys

                print(f"dfk: error: {word} takes true or false, got {value!r}", file=sys.stderr)
                raise SystemExit(2)
            out += [word] if value in TRUE else []
        else:
            out.append(word)
    return out


if __name__ == "__main__":
    import sys

    app(args=flags_from_values(sys.argv[1:]), prog_name="python -m dfk.cli.pipelines")
