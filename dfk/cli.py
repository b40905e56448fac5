"""The ``dfk`` command line. Heavy libraries are imported inside commands so ``--help`` is fast.

Every error a user can cause ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from dfk.config import TrainConfig
from dfk.errors import UserError, server_refusal, unreachable_server
from dfk.settings import SETTINGS

app = typer.Typer(
    name="dfk",
    help="DeepFake-vs-Real image classifier as an MLflow workflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Built-in synthetic set and data checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _everywhere(
    ctx: typer.Context,
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
        help="MLflow tracking store or server (sqlite:///..., http://host:5000, databricks); default: "
             "MLflow's own (sqlite:///mlflow.db here).")] = None,
) -> None:
    """DeepFake-vs-Real image classifier as an MLflow workflow."""
    if tracking_uri:  # the environment, so that worker processes and mlflow run's children see it too
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    asks_help = ctx.resilient_parsing or any(a in ("--help", "-h") for a in sys.argv[1:])
    if ctx.invoked_subcommand in OFFLINE_COMMANDS or asks_help:
        return
    if tracking_uri and (why := unreachable_server(tracking_uri)):
        _fail(why)
    _open_store()


def _open_store() -> None:
    """Before a command: end KILLED the runs a killed process left RUNNING (:mod:`dfk.liveness`), and
    say so. A store that does not exist yet is left for the command to create (or not); one that
    fails is the command's to report."""
    import logging

    from dfk.tracking import ready_store, store_exists

    try:
        if not store_exists():
            return
        ready_store()
        from dfk.liveness import end_orphaned_runs

        for run, why in end_orphaned_runs():
            typer.echo(f"dfk: run {run.info.run_id} ({run.info.run_name}) was left RUNNING but {why}: ended it KILLED",
                       err=True)
    except Exception as exc:
        logging.getLogger("dfk").debug("orphaned runs not checked: %s", exc)


#: Commands that never talk to the tracking store.
OFFLINE_COMMANDS = ("params", "models", "data")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"dfk: error: {message}", err=True)
    raise typer.Exit(code)


def stop_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def user_errors(fn: Callable) -> Callable:
    """Turn :class:`UserError` into one stderr line and exit 2; Ctrl-C or SIGTERM into exit 130.

    SIGTERM (a scheduler, ``kill``, a stopped ``mlflow run``) stops a command the way Ctrl-C does,
    so the runs it opened end KILLED; so does the death of the ``mlflow run`` that launched it. Under ``mlflow run``, the entry point's run ends with the
    command (FINISHED, FAILED or KILLED) when the command left it open, even if ``mlflow run``
    itself was stopped first and can no longer end it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, stop_as_interrupt)
        status = "FAILED"
        entry_run = os.environ.get("MLFLOW_RUN_ID")
        if entry_run:  # launched by mlflow run: stop when it is stopped
            from dfk.liveness import stop_with_launcher

            stop_with_launcher()
        try:
            result = fn(*args, **kwargs)
            status = "FINISHED"
            return result
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except Exception as exc:
            if (refused := server_refusal(exc)) is None:
                raise
            _fail(refused)
        except KeyboardInterrupt:
            status = "KILLED"
            typer.echo("dfk: interrupted", err=True)
            raise typer.Exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if os.environ.get("MLFLOW_RUN_ID"):  # mlflow is imported only when there is such a run
                from dfk.tracking import end_entry_run

                end_entry_run(status)
            if entry_run and status == "KILLED":
                from dfk.liveness import keep_killed

                keep_killed(entry_run)

    return wrapper


#: Commands that take training parameters also take them as ``--key value``: the form ``mlflow run``
#: appends for a -P parameter its entry point does not declare (``mlflow run . -e cnn -P dropout=0.3``).
TRAINING_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def parse_overrides(pairs: List[str] | None, ctx: typer.Context | None = None) -> dict[str, str]:
    """``-P key=value`` pairs, then any ``--key value`` pairs left over on the command line."""
    from dfk.config import parse_pairs

    out = parse_pairs(pairs or [], lambda pair: f"parameter {pair!r} is not KEY=VALUE (e.g. -P epochs=5)")
    extra = list(ctx.args) if ctx is not None else []
    while extra:
        key = extra.pop(0)
        if not key.startswith("--") or not extra:
            raise UserError(f"unexpected argument {key!r}; training parameters are -P KEY=VALUE (see `dfk params`)")
        out[key[2:].replace("-", "_")] = extra.pop(0)
    return out


def _unset(value: str | None) -> str | None:
    """An empty option (how an MLproject entry point passes "not given") as not given."""
    return value or None


def _quiet_tensorflow() -> None:
    """Keep the terminal to what a user acts on: progress, results, real warnings."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for message in (
        "The specified dataset source can be interpreted in multiple ways",  # a local folder is a local folder
        "Hint: Inferred schema contains integer column",  # the dataset's label column is never missing
        "`shuffle=True` was passed",
        "Your input ran out of data",  # Keras learns the epoch length of a filtered tf.data stream
    ):
        warnings.filterwarnings("ignore", message=message)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- train
ParamOption = Annotated[
    Optional[List[str]],
    typer.Option("--param", "-P", help="KEY=VALUE override of a training parameter (see `dfk params`); repeatable."),
]
ArchOption = Annotated[Optional[str], typer.Option(help="Architecture (see `dfk models`).")]
DataDirOption = Annotated[Optional[str], typer.Option("--data-dir", "-d", help="Image folder; default: the built-in set.")]


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
    from dfk.training import train as run_training

    if resume := _unset(resume):
        from dfk.checkpoints import resumable

        _, cfg, _ = resumable(resume)
        asked = {**overrides, **{k: v for k, v in (("arch", arch), ("data_dir", data_dir)) if v}}
        given = TrainConfig.from_overrides(asked).to_dict() if asked else {}
        default = TrainConfig.from_overrides({"arch": given.get("arch", cfg.arch)}).to_dict()
        # what differs from the run and from the default (mlflow run passes every default explicitly)
        if ignored := sorted(k for k, v in given.items() if k in asked and v != getattr(cfg, k) and v != default[k]):
            typer.echo(f"dfk: resuming run {resume} with its own parameters; ignoring {', '.join(ignored)}", err=True)
    else:
        cfg = TrainConfig.from_overrides(overrides, arch=arch, data_dir=data_dir)
    entry = os.environ.get("MLFLOW_RUN_ID") if resume else None  # mlflow run's own run, left open beside it
    from dfk.liveness import Heartbeat

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


# ----------------------------------------------------------------------------- data
@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help=(
        "New folder to write Train|Validation|Test / Fake|Real into (under mlflow run, which works in the "
        "project checkout, give an absolute path)."))],
    train: Annotated[Optional[int], typer.Option(help="Images per class in Train.")] = None,
    validation: Annotated[Optional[int], typer.Option(help="Images per class in Validation.")] = None,
    test: Annotated[Optional[int], typer.Option(help="Images per class in Test.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the square images in pixels.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed; the same seed gives the same files.")] = None,
    manipulations: Annotated[Optional[str], typer.Option(
        help="Comma-separated kinds fakes draw from (splice, upsample, colour, double_jpeg); default: all.")] = None,
    photos: Annotated[Optional[str], typer.Option(
        help="Folder of photographs to crop reals (and splice donors) from; default: the built-in ones.")] = None,
    shifted: Annotated[bool, typer.Option(
        help="Forgery parameters the default set never uses (for cross-domain tests).")] = False,
) -> None:
    """Write the built-in synthetic forgery set (with manipulation masks) into OUT."""
    import dataclasses

    from rich.progress import Progress

    from dfk.data.synth import SynthSpec, generate

    kinds = tuple(m.strip() for m in manipulations.split(",") if m.strip()) if manipulations is not None else None
    given = dict(train=train, validation=validation, test=test, image_size=image_size, seed=seed,
                 manipulations=kinds, photos=photos, shifted=shifted or None)
    spec = dataclasses.replace(SynthSpec(), **{k: v for k, v in given.items() if v is not None})
    spec.validate()
    total = 2 * (spec.train + spec.validation + spec.test)
    with Progress(transient=True) as bar:
        task = bar.add_task("writing images", total=total)
        path = generate(spec, out, progress=lambda n: bar.advance(task, n))
    typer.echo(f"wrote {total} images ({spec.image_size} px) and {total // 2} masks to {path}")


@data_app.command("inspect")
@user_errors
def data_inspect(
    data_dir: Annotated[str, typer.Argument(help="Image folder (Kaggle layout or flat Fake|Real), or builtin.")],
    val_split: Annotated[float, typer.Option(help="Validation (and test) fraction for flat folders.")] = TrainConfig.val_split,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Counts per split/class, bad files, fingerprint and a format-leakage check."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from dfk.data.leakage import LEAK_ACCURACY, check_leakage
    from dfk.data.scan import open_data

    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("reading image headers", total=None)
        index = open_data(data_dir, val_split=val_split, progress=lambda n: bar.advance(task, n))
    reports = check_leakage(index)
    leaks = [r for r in reports if r.leaks]
    if as_json:
        out = index.summary()
        out["bad_file_list"] = [{"path": p, "reason": r} for p, r in index.bad_files]
        out["leakage"] = [{"cue": r.cue, "balanced_accuracy": r.accuracy, "leaks": r.leaks, "real": r.real, "fake": r.fake}
                          for r in reports]
        typer.echo(json.dumps(out, indent=2))
    else:
        console = Console(soft_wrap=True)  # paths stay whole, so they can be copied
        console.print(f"[bold]{index.root}[/]  layout: {index.layout}  fingerprint: {index.fingerprint}")
        t = Table("split", "real", "fake", "total")
        for split, c in index.counts().items():
            t.add_row(split, str(c["real"]), str(c["fake"]), str(c["real"] + c["fake"]))
        console.print(t)
        console.print(f"ignored (not images): {index.ignored_files}   bad files: {len(index.bad_files)}")
        for p, reason in index.bad_files[:50]:
            console.print(f"  [red]bad[/] {p}: {reason}", markup=True, highlight=False)
        if len(index.bad_files) > 50:
            console.print(f"  ... and {len(index.bad_files) - 50} more")
        t = Table("cue", "balanced acc. from this cue alone", "real", "fake", title="format leakage")
        for r in reports:
            t.add_row(r.cue, f"{r.accuracy:.3f}" + (" LEAK" if r.leaks else ""), _short(r.real), _short(r.fake))
        console.print(t)
    for r in leaks:
        typer.echo(f"dfk: warning: {r.cue} alone separates fakes from reals "
                   f"(balanced accuracy {r.accuracy:.2f} > {LEAK_ACCURACY:.2f}); a model may learn the container, "
                   "not the forgery", err=True)


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(d.items())[:4])


@app.command("main", context_settings=TRAINING_OVERRIDES)
@user_errors
def main_cmd(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    param: ParamOption = None,
    archs: Annotated[Optional[str], typer.Option(
        help="Comma-separated architectures to train; arch:key=value overrides a parameter for one. "
             "Default: " + SETTINGS.archs)] = None,
    perturb: Annotated[str, typer.Option(help="Robustness check of the champion: default, all, none or a list.")] = SETTINGS.perturb,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the training runs.")] = SETTINGS.experiment,
) -> None:
    """The whole job: train each arch, register the best, promote behind the gate, check robustness."""
    from dfk.workflow import parse_archs, run_main

    base = TrainConfig.from_overrides(parse_overrides(param, ctx), data_dir=data_dir)
    archs = archs or SETTINGS.archs
    parse_archs(archs, base)  # bad entries fail here, before TensorFlow starts
    _quiet_tensorflow()
    r = run_main(base, archs, experiment, perturb)
    typer.echo(f"trained: {', '.join(f'{a} {rid}' for a, rid in r.run_ids.items())}")
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
    objective: Annotated[str, typer.Option(help="Per-epoch validation metric to optimise.")] = SETTINGS.objective,
    direction: Annotated[Optional[str], typer.Option(help="maximize or minimize (default: minimize for losses).")] = None,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none.")] = SETTINGS.pruner,
    study_name: Annotated[Optional[str], typer.Option(help=(
        "Resume this study (or start it), or join its sweep in progress from another machine on the same "
        "storage; default: a new one."))] = None,
    storage: Annotated[Optional[str], typer.Option(envvar="DFK_OPTUNA_STORAGE", help=(
        "Optuna storage URL (or DFK_OPTUNA_STORAGE; under mlflow run use that: a -P value is logged as a "
        "run parameter, password included); default: optuna.db beside the tracking store."))] = None,
    space: Annotated[Optional[str], typer.Option(help="YAML file overriding the search space.")] = None,
    workers: Annotated[int, typer.Option(help="Processes working on the same study.")] = SETTINGS.workers,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the sweep.")] = SETTINGS.tune_experiment,
) -> None:
    """Optuna sweep: one parent MLflow run, each trial a child run; pruned and failed trials marked."""
    base = TrainConfig.from_overrides(parse_overrides(param, ctx), arch=arch, data_dir=data_dir)
    _quiet_tensorflow()
    from dfk.tuning import SweepSpec, tune as run_tune

    spec = SweepSpec(base=base, n_trials=n_trials, objective=objective, direction=direction or "", pruner=pruner,
                     study_name=study_name or "", storage=storage or "", space_path=_unset(space), workers=workers,
                     experiment=experiment)
    r = run_tune(spec)
    typer.echo(f"study {r.study_name}: {r.n_trials} trials " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(r.states.items())))
    if r.best_value is not None:
        typer.echo(f"best {objective} {r.best_value:.4f} with {r.best_params} (run {r.best_run_id})")
    typer.echo(f"parent run {r.parent_run_id} in experiment {r.experiment!r}; study storage {r.storage}")


# ----------------------------------------------------------------------------- registry
ExperimentScope = Annotated[Optional[str], typer.Option(
    help="Experiment whose training runs to consider; default: every experiment (mlflow run puts runs "
         "in the experiment it is given, Default without --experiment-name).")]


@app.command()
@user_errors
def register(
    experiment: ExperimentScope = None,
    metric: Annotated[str, typer.Option(help="Run metric that picks the best (ties: lower test_log_loss).")] = SETTINGS.select_metric,
    name: Annotated[str, typer.Option(help="Registered model name.")] = SETTINGS.model_name,
) -> None:
    """Register the best finished run as a new version with alias 'challenger' (the first also 'champion')."""
    from dfk.registry import register_best

    r = register_best(_unset(experiment), metric, name)
    typer.echo(f"{'registered' if r.created else 'already registered'} {r.name} version {r.version} "
               f"(run {r.run_id}) as {', '.join(r.aliases)}")
    typer.echo(f"models:/{r.name}@{r.aliases[-1]}")


@app.command()
@user_errors
def promote(
    name: Annotated[str, typer.Option(help="Registered model name.")] = SETTINGS.model_name,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", "-d", help=(
        "Folder (or builtin) whose test split decides; default: the challenger's own training data, "
        "split as its run split it."))] = None,
    margin: Annotated[float, typer.Option(min=0.0, help="ROC-AUC the challenger must gain to become champion.")] = SETTINGS.promotion_margin,
    version: Annotated[Optional[str], typer.Option(help=f"Judge this version instead of the '{SETTINGS.challenger}' one.")] = None,
) -> None:
    """Evaluate challenger and champion on the same test split; move 'champion' only if better by MARGIN."""
    _quiet_tensorflow()
    from dfk.registry import promote as run_promote

    d = run_promote(name, _unset(data_dir), margin, version=_unset(version))
    typer.echo(f"{'promoted' if d.promoted else 'not promoted'}: {d.reason}")
    if d.data:
        typer.echo(f"judged on {d.data}")
    typer.echo(f"champion: models:/{name}@{SETTINGS.champion} (version {d.champion})")


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")],
    data_dir: Annotated[Optional[str], typer.Option("--data", "-d", help=(
        "Folder (Kaggle layout or flat Fake|Real) or builtin; default: the data the model was trained on, "
        "split as its run split it."))] = None,
    perturb: Annotated[Optional[str], typer.Option(help="all, default, or e.g. jpeg:50,blur (every level of blur).")] = None,
    split: Annotated[str, typer.Option(help="Split to score: test, validation or train.")] = "test",
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the evaluation run.")] = SETTINGS.eval_experiment,
) -> None:
    """Score a model on a folder and log an evaluation run (metrics, plots, report, robustness)."""
    from dfk.data.scan import SPLITS
    from dfk.scoring import ROBUST_METRICS, parse_perturbations

    perturbations = parse_perturbations(perturb)
    if split not in SPLITS:
        raise UserError(f"split must be {', '.join(SPLITS)}, got {split!r}")
    _quiet_tensorflow()
    from dfk.scoring import evaluate_model

    run_id, score, data = evaluate_model(model, _unset(data_dir), perturbations, experiment, split)
    typer.echo(f"scored on {data}")
    m = score.clean.metrics
    typer.echo(f"clean: ROC-AUC {m['roc_auc']:.4f}  EER {m['eer']:.4f}  accuracy {m['accuracy']:.4f}")
    for (kind, level), r in score.robust.items():
        typer.echo(f"{kind:<10} {str(level):<6} " + "  ".join(f"{k} {r[k]:.4f}" for k in ROBUST_METRICS))
    for p, reason in score.skipped:
        typer.echo(f"dfk: skipped {p}: {reason}", err=True)
    typer.echo(f"evaluation run {run_id} in experiment {experiment!r}")


@app.command()
@user_errors
def compare(
    experiment: ExperimentScope = None,
    metric: Annotated[str, typer.Option(help="Metric to sort by (losses and EER ascending).")] = SETTINGS.select_metric,
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    chart: Annotated[Optional[Path], typer.Option(help=(
        "Where to save the bar chart PNG; default: compare.png here (under mlflow run, whose working "
        "folder is the project checkout, only in the comparison run)."))] = None,
) -> None:
    """Training runs side by side (arch, key params, val/test metrics, duration) and a bar chart."""
    if format not in ("table", "json", "csv"):
        raise UserError(f"format must be table, json or csv, got {format!r}")
    _quiet_tensorflow()
    from dfk.compare import compare_runs, log_comparison
    from dfk.tracking import local_output

    table = compare_runs(_unset(experiment), metric)
    with local_output(chart, "compare.png") as (path, in_run):  # the comparison run keeps the chart either way
        run_id = log_comparison(table, metric, path, _unset(experiment))
    if format == "json":
        typer.echo(table.to_json(orient="records", indent=2))
    elif format == "csv":
        typer.echo(table.to_csv(index=False), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(*table.columns)
        for row in table.itertuples(index=False):
            t.add_row(*[_cell(v, whole=c == "epochs") for c, v in zip(table.columns, row)])
        console = Console(soft_wrap=True)
        if not console.is_terminal:  # piped or under mlflow run: whole columns, not an 80-column squeeze
            console = Console(soft_wrap=True, width=1000)
        console.print(t)
    typer.echo(f"chart: {f'runs:/{run_id}/{path.name}' if in_run else path}", err=format != "table")


def _cell(v, whole: bool = False) -> str:
    """A table cell: blank for missing, a count (``whole``) as an integer, other numbers to 4 places."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return str(int(v)) if whole else f"{v:.4f}"
    return str(v)


# ----------------------------------------------------------------------------- explain
def _report_skip(path: Path, reason: str) -> None:
    typer.echo(f"dfk: skipped {path}: {reason}", err=True)


@app.command()
@user_errors
def predict(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")],
    inputs: Annotated[List[Path], typer.Argument(help="Image files and/or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write (path, probability_fake, label).")] = Path("predictions.csv"),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
) -> None:
    """Score image files and folders in batches; write a CSV; skip and report unreadable files."""
    import csv

    from dfk.data.decode import collect_images

    files = collect_images(inputs)
    _quiet_tensorflow()
    from rich.progress import Progress

    from dfk.scoring import predict_files
    from dfk.serving import load_detector

    detector = load_detector(model)
    with Progress(transient=True) as bar:
        task = bar.add_task("scoring", total=len(files))
        rows = predict_files(detector, files, batch_size, _report_skip, lambda n: bar.advance(task, n))
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "probability_fake", "label"])
        w.writerows((p, f"{prob:.6f}", lab) for p, prob, lab in rows)
    tmp.replace(out)
    skipped = len(files) - len(rows)
    typer.echo(f"wrote {len(rows)} predictions to {out}" + (f"; skipped {skipped} unreadable" if skipped else ""))


@app.command("gradcam")
@user_errors
def gradcam_cmd(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")],
    inputs: Annotated[List[Path], typer.Argument(help="Image files and/or folders (an image file or a folder of them).")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help=(
        f"Folder for the overlays and the gallery; default: ./{SETTINGS.gradcam_out} (under mlflow run, whose "
        f"working folder is the project checkout: the entry point's run, under {SETTINGS.gradcam_out}/)."))] = None,
    layer: Annotated[Optional[str], typer.Option(help="Target layer; default: the last convolutional map of at least 8x8.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per gradient pass.")] = 16,
) -> None:
    """Grad-CAM overlays for images, plus one gallery PNG (original | heatmap | overlay)."""
    from dfk.data.decode import collect_images

    files = collect_images(inputs)
    _quiet_tensorflow()
    from dfk.explain import explain_files
    from dfk.serving import load_detector

    def written(path, prob, label, overlay_path):
        typer.echo(f"{path}\t{prob:.4f}\t{label}\t{overlay_path}")

    from dfk.tracking import local_output

    with local_output(out, SETTINGS.gradcam_out) as (folder, in_run):
        r = explain_files(load_detector(model), files, folder, _unset(layer), batch_size, on_written=written,
                          on_skip=_report_skip)
        if in_run:
            import mlflow

            mlflow.MlflowClient().log_artifacts(in_run, str(folder), SETTINGS.gradcam_out)
            folder = f"runs:/{in_run}/{SETTINGS.gradcam_out}"
    typer.echo(f"wrote {r.written} overlays and the gallery to {folder}" + (f"; skipped {r.skipped}" if r.skipped else ""))


# ----------------------------------------------------------------------------- web app
@app.command("app")
@user_errors
def app_cmd(
    model: Annotated[str, typer.Argument(help="runs:/RUN/model, models:/NAME@ALIAS or a local model folder.")] = SETTINGS.champion_uri,
    port: Annotated[int, typer.Option(help="Port on the host.")] = SETTINGS.app_port,
    host: Annotated[str, typer.Option(help="Interface to listen on; the default keeps the app on this machine.")] = "127.0.0.1",
    mlflow_ui: Annotated[Optional[str], typer.Option("--mlflow-ui", help="MLflow UI address for run links (default: the tracking URI when it is http).")] = None,
    max_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload in MB.")] = 20.0,
    max_files: Annotated[int, typer.Option(min=1, help="Most images the page accepts at a time.")] = 12,
    layer: Annotated[Optional[str], typer.Option(help="Grad-CAM target layer (default: the last convolutional map).")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="Another name browsers reach this machine by (repeatable); other Host headers are refused.")] = None,
) -> None:
    """Web page on HOST:PORT: drop images, get p(fake), the verdict and a Grad-CAM overlay."""
    _quiet_tensorflow()
    from dfk.webapp import Limits, serve

    serve(model, host=host, port=port, ui_url=_unset(mlflow_ui),
          limits=Limits(max_bytes=int(max_mb * 2**20), max_files=max_files), layer=_unset(layer),
          extra_hosts=tuple(allowed_host or ()))


def main() -> None:  # pragma: no cover - console entry for `python -m dfk`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
