"""The terminal view of the MLflow compare page: training runs side by side, sorted by a metric."""

from __future__ import annotations

import math
from pathlib import Path

from dfk.errors import UserError
from dfk.settings import SETTINGS

#: Columns of the comparison, in order: (header, where in the run it comes from). A param, tag or
#: metric is shown under its own MLflow name, so a column reads the same here, in the MLflow UI and
#: in search_runs: test_accuracy is at the 0.5 threshold, test_accuracy_at_threshold at the run's own
#: (chosen on validation), best_val_roc_auc on validation with the best weights.
COLUMNS = (
    ("run", "run_id"), ("experiment", "experiment"), ("name", "tags.mlflow.runName"), ("arch", "tags.arch"),
    ("backbone_weights", "tags.backbone_weights"), ("image_size", "params.image_size"),
    ("batch_size", "params.batch_size"), ("learning_rate", "params.learning_rate"),
    *((m, f"metrics.{m}") for m in ("epochs_trained", "best_val_roc_auc", "test_roc_auc", "test_accuracy",
                                    "test_accuracy_at_threshold", "test_eer", "test_log_loss")),
    ("duration_s", "duration"),
)


def compare_runs(experiment: str | None = None, metric: str = SETTINGS.select_metric):
    """A DataFrame of the finished training runs of ``experiment`` (every experiment when None), best
    first by ``metric``."""
    import mlflow
    import pandas as pd

    from dfk.runs import tracking
    from dfk.metrics.binary import lower_is_better
    from dfk.runs.tracking import RESOLVED

    runs = tracking.trained_runs(experiment, output_format="pandas")
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    if runs.empty or f"metrics.{metric}" not in runs:
        raise UserError(f"no finished training run with metric {metric!r} in {where}; "
                        "train one first (dfk train, or mlflow run . -e srm)")
    names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    runs["experiment"] = runs["experiment_id"].map(names)
    runs["duration"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds().round(1)
    for src in [c for _, c in COLUMNS if f"{c}{RESOLVED}" in runs]:  # "auto" given to mlflow run: what it became
        runs[src] = runs[f"{src}{RESOLVED}"].fillna(runs[src])
    table = pd.DataFrame({header: runs[src] if src in runs else None for header, src in COLUMNS})
    table["run"] = table["run"].str[:8]
    table[metric] = runs[f"metrics.{metric}"].values
    table = table.sort_values(metric, ascending=lower_is_better(metric), na_position="last").reset_index(drop=True)
    return table.loc[:, ~table.columns.duplicated()]


def log_comparison(table, metric: str, chart: Path, experiment: str | None = None) -> str:
    """Draw the bar chart to ``chart`` and keep it, with the table, in a run of its own tagged as a
    comparison (in ``experiment``, or dfk's own when the table spans experiments; under ``mlflow run``
    the entry point's run). Returns its id."""
    import mlflow

    from dfk.runs import tracking

    bar_chart(table, metric, chart)
    tracking.use_experiment(experiment)
    with tracking.run(f"compare-{metric}", tags={"dfk_compare": "true", **tracking.standard_tags()}) as run:
        mlflow.log_artifact(str(chart))
        mlflow.log_text(table.to_csv(index=False), "compare.csv")
    return run.info.run_id


def bar_chart(table, metric: str, path: Path) -> Path:
    from dfk.metrics.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(table)), 3.6))
    labels = [f"{a}\n{r}" for a, r in zip(table["arch"], table["run"])]
    values = [v if isinstance(v, float) and math.isfinite(v) else 0 for v in table[metric]]
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"runs by {metric}")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)
