"""One training path for every architecture: data -> model -> fit -> evaluate -> MLflow run.

``train(cfg)`` returns the run id, the metrics and the model; the CLI, the MLproject entry
points and the Optuna tuner all call it. Nothing here names an architecture.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfk.config import TrainConfig
from dfk.training.fit import compile_model, schedule_callbacks  # noqa: F401  (their home before fit.py)

log = logging.getLogger(__name__)

#: Keras metrics tracked every epoch; the same names for every architecture (val_ prefixed too).
EPOCH_METRICS = ("accuracy", "auc", "precision", "recall")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    history: dict[str, list[float]]
    backbone_weights: str
    model: Any = field(repr=False, default=None)
    model_uri: str | None = None


def predict_split(model, ds) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, probabilities and paths of a ``with_paths`` dataset, in one pass over the files (a file
    given as several views, :func:`dfk.data.pipeline.scoring_dataset`: the mean of their probabilities)."""
    ys, ps, paths = [], [], []
    for x, y, p in ds:
        ps.append(np.asarray(model(x, training=False)).reshape(len(y), -1).mean(axis=1))
        ys.append(y.numpy())
        paths += [s.decode() for s in p.numpy()]
    if not ps:
        return np.zeros(0, int), np.zeros(0), []
    return np.concatenate(ys).astype(int), np.concatenate(ps), paths


def run_name(cfg: TrainConfig) -> str:
    return f"{cfg.arch}-{cfg.image_size}px-bs{cfg.batch_size}-lr{cfg.learning_rate:g}"


def train(
    cfg: TrainConfig,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    log_model: bool = True,
    tags: dict[str, str] | None = None,
    index=None,
    checkpoint: bool = True,
    resume_run_id: str | None = None,
) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.data_dir`` and log one complete MLflow run.

    ``parent_run_id`` makes the run a child of that run (also from another process, as tuning
    workers are); ``callbacks`` join Keras' fit (the tuner's pruning callback); ``index`` is the
    data already opened for ``cfg`` (opened here when it is None or was split otherwise).
    ``checkpoint`` backs up every epoch so that a killed run can be resumed; ``resume_run_id``
    continues such a run (its ``cfg`` from :func:`dfk.training.checkpoints.resumable`).
    """
    from dfk.training import devices
    from dfk.training.checkpoints import Checkpoints

    cfg = cfg.replace(mixed_precision=devices.resolve_mixed_precision(cfg.mixed_precision))
    with devices.precision(cfg.mixed_precision):
        return _train(cfg, experiment, parent_run_id, callbacks, log_model, tags, index,
                      Checkpoints(checkpoint, resume_run_id))


def _train(cfg: TrainConfig, experiment, parent_run_id, callbacks, log_model, tags, index, ckpt) -> TrainResult:
    """The steps of a run, top to bottom; whether it resumes is ``ckpt``'s business alone."""
    import keras

    from dfk.models import starts_pretrained
    from dfk.runs import tracking
    from dfk.training import devices
    from dfk.training.fit import Fit

    keras.utils.set_random_seed(cfg.seed)
    index = _open_data(cfg, index)  # user errors surface before any run is created
    place = devices.for_strategy(cfg.strategy)
    model, used_weights = _build_model(cfg, place)
    tags = {"arch": cfg.arch, "backbone_weights": used_weights, **devices.describe(), **tracking.standard_tags(),
            **(tags or {}),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    ckpt.use_experiment(experiment)
    with tracking.run(run_name(cfg), tags=tags, run_id=ckpt.resume_run_id) as active, \
            tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt.begin(active, tmp, log_inputs=lambda: _log_inputs(cfg, place, index, tags))
        data = _Streams.of(cfg, place, index)
        frozen_first = starts_pretrained(cfg.arch, used_weights, cfg.fine_tune_at)
        fit = Fit(model, cfg, place, data.train, data.validation, ckpt, frozen_first, callbacks)
        phase_1_end = fit.head()  # phase 1: the head on a frozen pretrained trunk, or the whole model
        fit.fine_tune(after=phase_1_end)  # phase 2: the trunk's last layers too, from the best head
        fit.restore_best()
        _log_fit(fit.history, fit.seconds)
        result = _evaluate(model, cfg, index, data, tmp / "artifacts")
        _log_reports(model, fit.history, result, index, data, tmp / "artifacts")
        _log_gradcam_gallery(model, result.test, cfg, tmp, result.temperature)
        model_uri = _log_model(model, cfg, used_weights, result, index, tmp, data.native) if log_model else None
        run_id = active.info.run_id
    ckpt.finished()
    metrics = result.metrics
    print(f"[dfk] run {run_id}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"ROC-AUC {metrics['test_roc_auc']:.4f}, EER {metrics['test_eer']:.4f}", flush=True)
    return TrainResult(run_id, metrics, fit.history, used_weights, model, model_uri)


def _open_data(cfg: TrainConfig, index):
    """``index`` when it was opened for ``cfg``'s split, else the folder opened now."""
    from dfk.data.scan import DataSpec

    spec = DataSpec.of_config(cfg)
    return index if index is not None and index.spec.same_split(spec) else spec.open()


def _build_model(cfg: TrainConfig, place):
    """The architecture's model on the devices of ``place``, and the weights it started from."""
    from dfk.models import create_model

    with place.scope():
        model, used_weights = create_model(cfg.arch, cfg.image_size, cfg.weights, cfg.dropout, cfg.dense_units)
    if place.strategy is not None:
        print(f"[dfk] {cfg.strategy}: {place.replicas} replicas, global batch {place.global_batch(cfg.batch_size)}, "
              f"mixed precision {cfg.mixed_precision}", flush=True)
    return model, used_weights


def _log_inputs(cfg: TrainConfig, place, index, tags: dict[str, str]) -> None:
    """What a fresh run starts from: tags, parameters as used, the config and the dataset."""
    import mlflow

    from dfk.runs import tracking

    mlflow.set_tags(tags)
    tracking.log_params_once({**cfg.to_dict(), "replicas": place.replicas,
                              "global_batch_size": place.global_batch(cfg.batch_size)})
    mlflow.log_text(cfg.to_json(), "config.json")
    tracking.log_dataset(index)


@dataclass
class _Streams:
    """The run's tf.data streams, and the files they failed to decode."""

    train: Any
    validation: Any
    common: dict[str, Any]
    failures: Any
    # A native-resolution model (ModelSpec.native_resolution) on data with pictures larger than its input:
    # trained on crops, and scored whole; on pictures no larger than its input nothing changes.
    native: bool = False

    @classmethod
    def of(cls, cfg: TrainConfig, place, index) -> "_Streams":
        from dfk.data.pipeline import DecodeFailures, make_dataset
        from dfk.data.views import larger_than_input
        from dfk.models import get_spec

        failures = DecodeFailures()
        # face crops are scored resized to the model's size (dfk.data.faces), so a face model trains on them so
        native = get_spec(cfg.arch).native_resolution and not cfg.faces and larger_than_input(
            [p for split in ("train", "validation", "test") for p in index.paths(split)], index.info, cfg.image_size)
        # fit splits each batch across the replicas: the stream yields batch_size per replica.
        # the scan's header of each file routes it to TensorFlow's own decoder or to Pillow (make_dataset)
        common = dict(image_size=cfg.image_size, batch_size=place.global_batch(cfg.batch_size), failures=failures,
                      info=index.info, native=native)
        return cls(make_dataset(index.paths("train"), index.labels("train"), training=True, cfg=cfg, seed=cfg.seed,
                                **common),
                   make_dataset(index.paths("validation"), index.labels("validation"), **common), common, failures,
                   native)

    def with_paths(self, index, split: str):
        from dfk.data.pipeline import make_dataset, scoring_dataset

        if self.native:  # scored as every entry point scores a file (dfk.data.views.decode_views)
            return scoring_dataset(index.paths(split), index.labels(split), self.common["image_size"], self.failures)
        return make_dataset(index.paths(split), index.labels(split), **self.common, with_paths=True)

    def scorer(self, model):
        """The model that scores :meth:`with_paths` (a native-resolution one takes pictures of any size)."""
        from dfk.models.any_size import any_size_model

        return any_size_model(model) if self.native else model


def _log_fit(history: dict[str, list[float]], seconds: float) -> None:
    import mlflow

    mlflow.log_metrics({
        "epochs_trained": len(history.get("loss", [])),
        "best_epoch": int(np.nanargmin(history["val_loss"])) + 1 if history.get("val_loss") else 0,
        "train_seconds": seconds,
    })


@dataclass
class _Evaluation:
    threshold: float
    temperature: float
    test: Any  # the test split's evaluation (dfk.metrics.binary)
    metrics: dict[str, float]


def _evaluate(model, cfg: TrainConfig, index, data: _Streams, art: Path) -> _Evaluation:
    """Threshold (and temperature) on validation, metrics on test, both with the best weights."""
    import mlflow

    from dfk.metrics.binary import (apply_temperature, choose_threshold, evaluate_predictions, fit_temperature,
                                    write_report)

    scorer = data.scorer(model)
    yv, pv, _ = predict_split(scorer, data.with_paths(index, "validation"))
    yt, pt, test_paths = predict_split(scorer, data.with_paths(index, "test"))
    temperature = 1.0
    if cfg.calibrate:
        temperature = fit_temperature(yv, pv)
        raw = evaluate_predictions(yt, pt, choose_threshold(yv, pv, cfg.target_fpr), test_paths)
        write_report(raw, art / "evaluation" / "uncalibrated", "test_uncalibrated")
        mlflow.log_metrics({"temperature": temperature, "test_ece_uncalibrated": raw.metrics["ece"],
                            "test_log_loss_uncalibrated": raw.metrics["log_loss"]})
        pv, pt = apply_temperature(pv, temperature), apply_temperature(pt, temperature)
    threshold = choose_threshold(yv, pv, cfg.target_fpr)
    val_eval = evaluate_predictions(yv, pv, threshold)
    test_eval = evaluate_predictions(yt, pt, threshold, test_paths)
    metrics = {f"test_{k}": v for k, v in test_eval.metrics.items()}
    metrics.update({f"best_val_{k}": v for k, v in val_eval.metrics.items()})
    mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    return _Evaluation(threshold, temperature, test_eval, metrics)


def _log_reports(model, history, result: _Evaluation, index, data: _Streams, art: Path) -> None:
    """The test report, learning curves, model summary, history and the files that could not be read."""
    import mlflow

    from dfk.metrics.binary import plot_learning_curves, write_report

    write_report(result.test, art / "evaluation", "test")
    plot_learning_curves(history, art / "learning_curves.png")
    lines: list[str] = []
    model.summary(print_fn=lambda line, *a, **k: lines.append(line))
    (art / "model_summary.txt").write_text("\n".join(lines) + "\n")
    (art / "history.json").write_text(json.dumps(history, indent=1))
    mlflow.log_artifacts(str(art))
    bad = index.bad_files + data.failures.items()
    mlflow.log_metric("bad_files", len(bad))
    mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in bad), "data/bad_files.tsv")


def _log_model(model, cfg: TrainConfig, used_weights: str, result: _Evaluation, index, tmp: Path,
               native: bool) -> str:
    """The served model (:mod:`dfk.serving.detector`) in the run; its ``runs:/`` URI. ``native``: the run
    trained on native-resolution crops (:class:`_Streams`), so it is served scoring pictures whole."""
    import mlflow

    from dfk.serving.detector import log_detector

    keras_path = tmp / "model.keras"
    model.save(keras_path)
    meta = {"arch": cfg.arch, "image_size": cfg.image_size, "threshold": result.threshold,
            "temperature": result.temperature, "batch_size": cfg.batch_size, "backbone_weights": used_weights,
            "dataset_fingerprint": index.fingerprint}
    # Served as the run scored (dfk.data.views.decode_views). A model that only ever saw whole pictures at
    # its input size (the built-in set) learnt them at that scale: a larger picture is resized for it, as
    # before; scored whole, its max pooling over a far larger map called every real photograph fake.
    if native:
        meta["native_resolution"] = True
    if cfg.faces:  # how its images were cut: scoring finds and cuts faces the same way
        from dfk.data.faces import folder_rule

        meta["faces"] = folder_rule(index.root).to_dict()
    info = log_detector(str(keras_path), meta, Path(index.paths("test")[0]).read_bytes())
    model_uri = f"runs:/{mlflow.active_run().info.run_id}/model"
    mlflow.set_tag("model_uri", model_uri)
    log.debug("logged %s", info.model_uri)
    return model_uri


def _log_gradcam_gallery(model, test_eval, cfg: TrainConfig, tmp: Path, temperature: float = 1.0) -> None:
    """Grad-CAM gallery of test images and faithfulness scores (when dfk.explain.gradcam is available)."""
    try:
        from dfk.explain import gradcam as explain
    except ImportError:
        return
    if cfg.gradcam_images > 0:
        explain.log_run_explanations(model, test_eval, cfg, tmp / "gradcam", temperature)
