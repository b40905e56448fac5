"""Commands over finished runs and registered models: register, promote, evaluate, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dfk.cli.common import (ExperimentScope, _quiet_tensorflow, _unset, app, user_errors)
from dfk.errors import UserError
from dfk.settings import SETTINGS


@app.command()
@user_errors
def register(
    experiment: ExperimentScope = None,
    metric: Annotated[str, typer.Option(help="Run metric that picks the best (ties: lower test_log_loss).")] = SETTINGS.select_metric,
    name: Annotated[str, typer.Option(help="Registered model name.")] = SETTINGS.model_name,
) -> None:
    """Register the best finished run on the newest training run's data as a new version with alias
    'challenger' (the first also 'champion'); test figures compare only on one test split."""
    from dfk.registry.promotion import register_best

    r = register_best(_unset(experiment), metric, name)
    typer.echo(f"{'registered' if r.created else 'already registered'} {r.name} version {r.version} "
               f"(run {r.run_id}) as {', '.join(r.aliases)}")
    if r.data:
        typer.echo(f"the best of the runs on {r.data}, the data of the newest training run")
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
    from dfk.registry.promotion import promote as run_promote

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
    frames: Annotated[str, typer.Option(help="A folder of videos: frames scored per video, a count (16) or a rate (2fps).")] = "16",
    aggregate: Annotated[str, typer.Option(help="A folder of videos: a video's score from its frames', mean, max or median.")] = "mean",
) -> None:
    """Score a model on a folder and log an evaluation run (metrics, plots, report, robustness).

    A Fake|Real folder of videos gets video-level metrics (test_*) and frame-level ones (test_frame_*)."""
    from dfk.data.scan import SPLITS
    from dfk.evaluation.scoring import ROBUST_METRICS, parse_perturbations

    perturbations = parse_perturbations(perturb)
    if split not in SPLITS:
        raise UserError(f"split must be {', '.join(SPLITS)}, got {split!r}")
    _quiet_tensorflow()
    from dfk.evaluation.scoring import evaluate_model

    run_id, score, data = evaluate_model(model, _unset(data_dir), perturbations, experiment, split, frames, aggregate)
    typer.echo(f"scored on {data}")
    m = score.clean.metrics
    typer.echo(f"{'video level' if score.frames else 'clean'}: ROC-AUC {m['roc_auc']:.4f}  EER {m['eer']:.4f}  accuracy {m['accuracy']:.4f}")
    if score.frames:
        f = score.frames.metrics
        typer.echo(f"frame level: ROC-AUC {f['roc_auc']:.4f}  EER {f['eer']:.4f}  accuracy {f['accuracy']:.4f}")
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
    """Training runs side by side, best first by METRIC; logs a comparison run with the chart.

    Columns: arch, key params, metrics under their MLflow names, duration.
    Also logs a comparison run (tagged dfk_compare=true; in --experiment,
    else the dfk experiment; under mlflow run, the entry point's own run)
    holding the bar chart of METRIC and compare.csv. The chart also goes to
    --chart, else ./compare.png (under mlflow run only into that run,
    printed as runs:/<id>/compare.png).
    """
    if format not in ("table", "json", "csv"):
        raise UserError(f"format must be table, json or csv, got {format!r}")
    _quiet_tensorflow()
    from dfk.evaluation.compare import compare_runs, log_comparison
    from dfk.runs.tracking import local_output

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
            t.add_row(*[_cell(v, whole=c == "epochs_trained") for c, v in zip(table.columns, row)])
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
