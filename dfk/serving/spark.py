"""Batch scoring on Spark: a folder (or bucket) of images -> one row per file with the model's verdict.

Spark's ``binaryFile`` source reads the files; MLflow's ``spark_udf`` scores them with the logged
pyfunc (``models:/deepfake-detector@champion`` by default), one model per executor process, Arrow
batches of at most :attr:`dfk.settings.Settings.max_request_rows` rows (the pyfunc's own limit).

The served pyfunc refuses a whole request when one row is not a usable image (an HTTP 400 names
the row), so a bad file would fail its Spark task and then the job. Each file is therefore first
decoded by dfk's own decoder (:func:`dfk.data.views.scoring_picture`, every check of serving) as
the model reads it, on the executors: resized to its input size, or, for a native-resolution model,
at the picture's own resolution (capped). A file that fails gets its reason in the ``error`` column
and a placeholder for the model; one that decodes is handed to the pyfunc as a lossless BMP of
exactly those pixels, which the pyfunc brings to the same views again without resampling. (A face
model gets the file's own bytes: it finds faces at full size.) So each file is decoded once at full
cost, scores equal ``dfk predict``'s, and no file fails the job.

Output columns: ``path``, ``probability_fake`` (null for a bad file), ``label`` (``fake``/``real``,
null for a bad file), ``error`` (null for a scored file).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd  # at module level: Spark reads the pandas UDF's type hints from this module's names

from dfk.errors import UserError

OUTPUT_SCHEMA = "path string, probability_fake double, label string, error string"
#: What opening a file counts as when Spark packs files into tasks (``spark.sql.files.openCostInBytes``).
OPEN_COST = 64 * 1024
#: What the pyfunc returns to Spark per row.
VERDICT_TYPE = "probability_fake double, label string"


def glob_filter(extensions: Sequence[str] | None = None) -> str:
    """A Hadoop glob for ``pathGlobFilter`` matching dfk's image extensions, any letter case
    (Hadoop's globs are case-sensitive; ``*.{jpg,JPG,Jpg}`` would miss ``.jPg``)."""
    from dfk.data.decode import IMAGE_EXTENSIONS

    exts = sorted(e.lstrip(".") for e in (extensions or IMAGE_EXTENSIONS))
    return "*.{" + ",".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in e) for e in exts) + "}"


def _bmp(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "BMP")  # lossless and trivial to decode: the pyfunc gets these pixels back
    return buf.getvalue()


def prepare_udf(image_size: int, keep_bytes: bool = False, native: bool = False):
    """A pandas UDF: image bytes -> ``struct<image: binary, error: string>``: a BMP of the pixels the
    model's views are cut from (:func:`dfk.data.views.scoring_picture`: decoded, upright, at ``image_size``
    or, ``native``, at the picture's own resolution), or a placeholder and why the file is unusable.
    ``keep_bytes``: hand the file's own bytes on once they decode (a face model finds faces at full size)."""
    from pyspark.sql.functions import pandas_udf

    placeholder = _bmp(np.zeros((image_size, image_size, 3), np.uint8))

    @pandas_udf("image binary, error string")
    def prepare(content: pd.Series) -> pd.DataFrame:
        from dfk.data.decode import BadImage
        from dfk.data.views import scoring_picture

        images, errors = [], []
        for data in content:
            try:
                pixels = scoring_picture(bytes(data), image_size, native)
                images.append(bytes(data) if keep_bytes else _bmp(pixels))
                errors.append(None)
            except BadImage as exc:
                images.append(placeholder)
                errors.append(str(exc))
        return pd.DataFrame({"image": images, "error": errors})

    # Never evaluated twice for the two fields it gives (Spark may inline a deterministic UDF).
    return prepare.asNondeterministic()


@dataclass
class SparkScoring:
    """What a scoring job did: rows written, of which errors, and where."""

    out: str
    rows: int
    errors: int
    seconds: float


def session(master: str | None = None):
    """The active Spark session, or a local one (``master``, default ``local[*]``) when there is none.

    On a cluster (spark-submit, Databricks, EMR) the session exists and ``master`` is ignored.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    import os
    import sys

    # Local executors run this Python (its packages: dfk, TensorFlow), not the first python3 on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.master(master or "local[*]").appName("dfk score-spark")
            .config("spark.ui.enabled", "false").config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate())


def score_images(spark, inputs: Sequence[str], model_uri: str, image_size: int, glob: str | None = None,
                 keep_bytes: bool = False, native: bool = False):
    """A DataFrame of :data:`OUTPUT_SCHEMA`, one row per image file under ``inputs`` (folders, searched
    recursively, or URIs Spark reads: ``s3://``, ``abfss://``, ``dbfs:/``), scored by ``model_uri``
    with ``mlflow.pyfunc.spark_udf`` (``env_manager="local"``: dfk installed where the executors run).
    ``image_size``, ``keep_bytes``, ``native``: how the model reads a picture (:func:`prepare_udf`)."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from dfk.settings import SETTINGS

    # The pyfunc takes at most this many rows per call; Spark's default Arrow batch is 10,000.
    current = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(min(current, SETTINGS.max_request_rows)))
    # Spark packs files into tasks counting each as at least 4 MB read: ~30 images per task, and each
    # task sets its UDFs up again (in local mode MLflow even loads the model per task). An image costs
    # its decode and the model, not 4 MB of reading: count it as OPEN_COST.
    spark.conf.set("spark.sql.files.openCostInBytes", str(OPEN_COST))
    images = (spark.read.format("binaryFile").option("pathGlobFilter", glob or glob_filter())
              .option("recursiveFileLookup", "true").load(list(inputs)))
    detect = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=VERDICT_TYPE, env_manager="local")
    prepared = images.select("path", prepare_udf(image_size, keep_bytes, native)(F.col("content")).alias("p"))
    scored = prepared.select("path", F.col("p.error").alias("error"),
                             detect(F.struct(F.col("p.image").alias("image"))).alias("v"))
    good = F.col("error").isNull()
    return scored.select(
        "path",
        F.when(good, F.col("v.probability_fake")).alias("probability_fake"),
        F.when(good, F.col("v.label")).alias("label"),
        "error",
    )


def score_to_files(inputs: Sequence[str], out: str, model_uri: str, fmt: str | None = None,
                   master: str | None = None, glob: str | None = None) -> SparkScoring:
    """Score every image under ``inputs`` and write the rows to ``out`` (a folder of Parquet, or CSV
    with a header, part files as Spark writes them; the format from ``fmt`` or ``out``'s suffix)."""
    import time

    from dfk.serving.detector import load_detector
    from dfk.serving.uri import resolve_model

    fmt = fmt or ("csv" if str(out).lower().endswith(".csv") else "parquet")
    if fmt not in ("parquet", "csv"):
        raise UserError(f"output format {fmt!r} is not parquet or csv")
    local = [i for i in inputs if "://" not in i and not i.startswith("dbfs:")]
    if missing := [i for i in local if not Path(i).exists()]:
        raise UserError(f"{', '.join(missing)} does not exist")
    ref = resolve_model(model_uri)  # once: an alias that moves meanwhile cannot change the model mid-job
    detector = load_detector(ref)  # (a model that is not dfk's fails here, in one line)
    spark = session(master)
    t = time.perf_counter()
    rows = score_images(spark, [str(Path(i).resolve()) if i in local else i for i in inputs], ref.uri,
                        detector.image_size, glob, keep_bytes=detector.faces is not None, native=detector.native)
    writer = rows.write.mode("overwrite")
    (writer.option("header", "true").csv(out) if fmt == "csv" else writer.parquet(out))
    written = spark.read.parquet(out) if fmt == "parquet" else spark.read.option("header", "true").csv(out)
    counts = written.groupBy(written.error.isNull().alias("ok")).count().collect()
    by = {r["ok"]: r["count"] for r in counts}
    return SparkScoring(out, sum(by.values()), by.get(False, 0), time.perf_counter() - t)
