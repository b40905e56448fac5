"""One training path for every architecture: data -> model -> fit -> evaluate -> MLflow run.

``train(cfg)`` returns the run id, the metrics and the model; the CLI, the MLproject entry
points and the Optuna tuner all call it. Nothing here names an architecture.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfk.config import TrainConfig
from dfk.errors import UserError

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


def compile_model(model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


def log_epoch(epoch: int, logs) -> None:
    """One epoch's Keras logs as MLflow metrics at step = epoch index, written before returning."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in logs.items() if k != "learning_rate"}, step=epoch, synchronous=True)


def _epoch_logger():
    """Each epoch's logs to MLflow as it ends (MLflow's own Keras callback queues them, and a killed
    process loses the queue)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs:
                log_epoch(epoch, logs)

    return EpochLogger()


@contextlib.contextmanager
def interrupts_at_batch_end():
    """During ``fit``, Ctrl-C and SIGTERM stop training at the end of the current batch.

    Raised wherever the main thread happens to be, the interrupt can land inside TensorFlow's input
    pipeline (it runs dfk's Python decoder) and leave the iterator waiting forever; here the signal
    only sets a flag and the yielded Keras callback raises ``KeyboardInterrupt`` between batches. A
    second signal raises at once. Outside the main thread (no signals there) nothing changes."""
    import signal

    import keras

    asked: list[int] = []

    def handler(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)

    class StopWhenAsked(keras.callbacks.Callback):
        def _check(self, *args, **kwargs):
            if asked:
                raise KeyboardInterrupt

        on_train_batch_end = on_test_batch_end = on_epoch_end = _check

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield StopWhenAsked()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if asked:
        raise KeyboardInterrupt  # a signal during fit's last steps, after the last check


def schedule_callbacks(cfg: TrainConfig) -> list:
    """Early stopping and the learning-rate schedule, both silent during the warm-up.

    Epochs count over the whole run (``fit`` starts a second phase at its ``initial_epoch``), so
    a fine-tuning phase that starts after the warm-up is judged from its first epoch.
    """
    import keras

    out = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True,
                                         start_from_epoch=cfg.warmup_epochs)]
    if cfg.lr_patience > 0:
        out.append(_after_warmup(keras.callbacks.ReduceLROnPlateau, cfg.warmup_epochs)(
            monitor="val_loss", factor=0.5, patience=cfg.lr_patience, min_lr=cfg.learning_rate / 32, verbose=1))
    return out


def _after_warmup(callback_cls, warmup: int):
    """``callback_cls`` that ignores epochs before ``warmup`` (ReduceLROnPlateau has no
    ``start_from_epoch`` of its own and would halve the rate while a model is still at chance)."""

    class AfterWarmup(callback_cls):
        def on_epoch_end(self, epoch, logs=None):
            if epoch >= warmup:
                super().on_epoch_end(epoch, logs)

    AfterWarmup.__name__ = callback_cls.__name__
    return AfterWarmup


def predict_split(model, ds) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, probabilities and paths of a ``with_paths`` dataset, in one pass over the files."""
    ys, ps, paths = [], [], []
    for x, y, p in ds:
        ps.append(np.asarray(model(x, training=False)).reshape(-1))
        ys.append(y.numpy())
        paths += [s.decode() for s in p.numpy()]
    if not ps:
        return np.zeros(0, int), np.zeros(0), []
    return np.concatenate(ys).astype(int), np.concatenate(ps), paths


def _backbone(model):
    from dfk.models import BACKBONE

    try:
        return model.get_layer(BACKBONE)
    except ValueError:
        return None


def _unfreeze_last(backbone, n: int) -> None:
    """Unfreeze the last ``n`` layers of the backbone; BatchNorm stays frozen (its statistics
    were learned on far more data than a fine-tuning batch sees)."""
    import keras

    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        trainable = i >= len(backbone.layers) - n
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)


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

    cfg = cfg.replace(mixed_precision=devices.resolve_mixed_precision(cfg.mixed_precision))
    with devices.precision(cfg.mixed_precision):
        return _train(cfg, experiment, parent_run_id, callbacks, log_model, tags, index,
                      checkpoint or bool(resume_run_id), resume_run_id)


def _log_missing_epochs(run_id: str, state) -> int:
    """Log the epochs a checkpoint holds but the run's curves lack (the process died between the
    backup and the metric write); the number logged."""
    import mlflow

    client = mlflow.MlflowClient()
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    missing = [e for e in sorted(state.epochs) if e not in logged]
    for epoch in missing:
        log_epoch(epoch, state.epochs[epoch])
    return len(missing)


def _train(cfg: TrainConfig, experiment, parent_run_id, callbacks, log_model, tags, index, checkpoint,
           resume_run_id) -> TrainResult:
    import keras
    import mlflow

    from dfk.training import checkpoints

    from dfk.training import devices

    from dfk.runs import tracking
    from dfk.data.pipeline import DecodeFailures, make_dataset
    from dfk.data.scan import DataSpec
    from dfk.metrics.binary import (apply_temperature, choose_threshold, evaluate_predictions, fit_temperature,
                                plot_learning_curves, write_report)
    from dfk.models import create_model

    keras.utils.set_random_seed(cfg.seed)
    spec = DataSpec.of_config(cfg)
    if index is None or not index.spec.same_split(spec):
        index = spec.open()  # user errors surface before any run is created
    place = devices.for_strategy(cfg.strategy)
    with place.scope():
        model, used_weights = create_model(cfg.arch, cfg.image_size, cfg.weights, cfg.dropout, cfg.dense_units)
    if place.strategy is not None:
        print(f"[dfk] {cfg.strategy}: {place.replicas} replicas, global batch {place.global_batch(cfg.batch_size)}, "
              f"mixed precision {cfg.mixed_precision}", flush=True)
    backbone = _backbone(model)
    pretrained = used_weights != "random"

    if resume_run_id:  # the run's own experiment, whatever this command would pick
        mlflow.set_experiment(experiment_id=mlflow.get_run(resume_run_id).info.experiment_id)
    else:
        tracking.use_experiment(experiment)
    tags = {"arch": cfg.arch, "backbone_weights": used_weights, **tracking.standard_tags(), **(tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with tracking.run(run_name(cfg), tags=tags, run_id=resume_run_id) as active, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = checkpoints.checkpoint_dir(active.info.run_id) if checkpoint else None
        state = checkpoints.State.load(folder) if resume_run_id else checkpoints.State()
        if resume_run_id:
            redone = _log_missing_epochs(resume_run_id, state)
            print(f"[dfk] resuming run {resume_run_id} after epoch {len(state.epochs)}"
                  + (f" ({redone} epoch(s) logged from the checkpoint)" if redone else ""), flush=True)
            mlflow.set_tag("dfk.resumed", str(int(active.data.tags.get("dfk.resumed", "0")) + 1))
        else:
            mlflow.set_tags(tags)
            tracking.log_params_once({**cfg.to_dict(), "replicas": place.replicas,
                                      "global_batch_size": place.global_batch(cfg.batch_size)})
            mlflow.log_text(cfg.to_json(), "config.json")
            tracking.log_dataset(index)

        failures = DecodeFailures()
        # fit splits each batch across the replicas: the stream yields batch_size per replica.
        common = dict(image_size=cfg.image_size, batch_size=place.global_batch(cfg.batch_size), failures=failures)
        train_ds = make_dataset(index.paths("train"), index.labels("train"), training=True, cfg=cfg, seed=cfg.seed, **common)
        val_ds = make_dataset(index.paths("validation"), index.labels("validation"), **common)

        best_path = (folder or tmp) / checkpoints.BEST  # written through BEST_PENDING when checkpointing
        history: dict[str, list[float]] = state.history()

        def best_val_loss() -> float:
            losses = [v for v in history.get("val_loss", []) if math.isfinite(v)]
            return min(losses) if losses else math.inf

        def fit(lr: float, first_epoch: int, epochs: int, phase: str) -> int:
            """One fit phase; the epoch it ended at (a phase a checkpoint says is over runs no epoch)."""
            with place.scope():
                compile_model(model, lr)
            best = best_val_loss()
            checkpoint = keras.callbacks.ModelCheckpoint(
                str(folder / checkpoints.BEST_PENDING if folder else best_path), monitor="val_loss",
                save_best_only=True, save_weights_only=True, initial_value_threshold=best if math.isfinite(best) else None,
            )
            schedule = schedule_callbacks(cfg)
            backup = [checkpoints.run_backup(folder, phase, state, schedule)] if folder else []
            end = state.phases_done.get(phase, first_epoch + epochs)
            start = state.next_epoch(first_epoch)  # after a resume, past the epochs done
            print(f"[dfk] {phase}: epochs {start + 1}-{end}, learning rate {lr:g}", flush=True)
            with interrupts_at_batch_end() as stop:
                h = model.fit(
                    train_ds, validation_data=val_ds, initial_epoch=first_epoch, epochs=end,
                    callbacks=[checkpoint, *schedule, keras.callbacks.TerminateOnNaN(), *backup, _epoch_logger(),
                               *callbacks, stop],
                    verbose=2, shuffle=False,  # the tf.data stream shuffles itself every epoch
                )
            for k, v in h.history.items():
                history.setdefault(k, []).extend(float(x) for x in v)
            if any(not math.isfinite(v) for v in history.get("loss", [])):
                raise UserError(f"training diverged (NaN loss) in {phase}; lower learning_rate (now {lr:g})")
            if not folder:
                return first_epoch + len(h.history.get("loss", []))
            if phase not in state.phases_done:  # (early stopping records its own end)
                checkpoints.end_phase(folder, state, phase, state.next_epoch(first_epoch))
            return state.phases_done[phase]

        started = time.time()
        if backbone is not None and pretrained:
            backbone.trainable = False  # phase 1: the notebook's frozen backbone, head only
        first_phase_end = fit(cfg.learning_rate, 0, cfg.epochs, "phase 1" if pretrained and backbone is not None else "training")
        if backbone is not None and pretrained and cfg.fine_tune_at > 0:
            if best_path.exists():  # fine-tune from the best head, however phase 1 ended or was resumed
                model.load_weights(str(best_path))
            _unfreeze_last(backbone, cfg.fine_tune_at)
            fit(cfg.fine_tune_lr, first_phase_end, cfg.fine_tune_epochs, f"phase 2 (last {cfg.fine_tune_at} layers)")
        elapsed = time.time() - started
        if best_path.exists():
            model.load_weights(str(best_path))

        mlflow.log_metrics({
            "epochs_trained": len(history.get("loss", [])),
            "best_epoch": int(np.nanargmin(history["val_loss"])) + 1 if history.get("val_loss") else 0,
            "train_seconds": elapsed,
        })

        # Threshold on validation, metrics on test, both with the best weights.
        eval_common = dict(common, with_paths=True)
        yv, pv, _ = predict_split(model, make_dataset(index.paths("validation"), index.labels("validation"), **eval_common))
        yt, pt, test_paths = predict_split(model, make_dataset(index.paths("test"), index.labels("test"), **eval_common))
        temperature = 1.0
        art = tmp / "artifacts"
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

        write_report(test_eval, art / "evaluation", "test")
        plot_learning_curves(history, art / "learning_curves.png")
        lines: list[str] = []
        model.summary(print_fn=lambda line, *a, **k: lines.append(line))
        (art / "model_summary.txt").write_text("\n".join(lines) + "\n")
        (art / "history.json").write_text(json.dumps(history, indent=1))
        mlflow.log_artifacts(str(art))
        bad = index.bad_files + failures.items()
        mlflow.log_metric("bad_files", len(bad))
        mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in bad), "data/bad_files.tsv")

        _log_gradcam_gallery(model, test_eval, cfg, tmp, temperature)

        model_uri = None
        if log_model:
            keras_path = tmp / "model.keras"
            model.save(keras_path)
            meta = {"arch": cfg.arch, "image_size": cfg.image_size, "threshold": threshold, "temperature": temperature,
                    "batch_size": cfg.batch_size, "backbone_weights": used_weights,
                    "dataset_fingerprint": index.fingerprint}
            example = Path(index.paths("test")[0]).read_bytes()
            from dfk.serving.detector import log_detector

            info = log_detector(str(keras_path), meta, example)
            model_uri = f"runs:/{active.info.run_id}/model"
            mlflow.set_tag("model_uri", model_uri)
            log.debug("logged %s", info.model_uri)
        run_id = active.info.run_id

    if folder:
        checkpoints.discard(run_id)  # finished: nothing left to resume
    print(f"[dfk] run {run_id}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"ROC-AUC {metrics['test_roc_auc']:.4f}, EER {metrics['test_eer']:.4f}", flush=True)
    return TrainResult(run_id, metrics, history, used_weights, model, model_uri)


def _log_gradcam_gallery(model, test_eval, cfg: TrainConfig, tmp: Path, temperature: float = 1.0) -> None:
    """Grad-CAM gallery of test images and faithfulness scores (when dfk.explain.gradcam is available)."""
    try:
        from dfk.explain import gradcam as explain
    except ImportError:
        return
    if cfg.gradcam_images > 0:
        explain.log_run_explanations(model, test_eval, cfg, tmp / "gradcam", temperature)
