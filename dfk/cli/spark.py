"""``dfk score-spark``: score a folder or bucket of images on Spark with a logged or registered model."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from dfk.cli.common import _quiet_tensorflow, app, user_errors


@app.command("score-spark")
@user_errors
def score_spark(
    inputs: Annotated[List[str], typer.Argument(help="Folders (searched recursively) or URIs Spark reads "
                                                     "(s3://..., abfss://..., dbfs:/...).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder to write: Parquet, or CSV when it ends in .csv "
                                                         "(Spark's part files).")] = "scores.parquet",
    model: Annotated[str, typer.Option("--model", "-m", help="runs:/RUN/model, models:/NAME@ALIAS or a local "
                                                             "model folder.")] = "models:/deepfake-detector@champion",
    master: Annotated[Optional[str], typer.Option(help="Spark master when no session is running (default local[*]); "
                                                       "ignored under spark-submit or on Databricks.")] = None,
    glob: Annotated[Optional[str], typer.Option(help="pathGlobFilter for the files (default: dfk's image "
                                                     "extensions, any case).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="parquet or csv (default: from --out).")] = None,
) -> None:
    """Score images on Spark (MLflow's spark_udf over a binaryFile DataFrame): one row per file with
    path, probability_fake, label and error; a file that is not a usable image gets its reason in
    error, and the job goes on. Needs `pip install 'dfk[spark]'` and a Java runtime (docs/SCALING.md)."""
    import importlib.util

    from dfk.errors import UserError

    if importlib.util.find_spec("pyspark") is None:
        raise UserError("PySpark is not installed; pip install 'dfk[spark]' (and a Java runtime, 17 or later)")
    _quiet_tensorflow()
    from dfk.serving.spark import score_to_files

    done = score_to_files(inputs, out, model, fmt, master, glob)
    typer.echo(f"Scored {done.rows - done.errors} images ({done.errors} unusable, see the error column) in "
               f"{done.seconds:.1f} s; wrote {done.out}")
