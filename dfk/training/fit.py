"""Keras' ``fit``, the way every run uses it: compile, the schedule, the callbacks, and the two phases
(the head on a frozen backbone, then fine-tuning), each stoppable between batches and resumable from
its checkpoint (:class:`dfk.training.checkpoints.Checkpoints`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Sequence

from dfk.config import TrainConfig
from dfk.errors import UserError


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
    only sets a flag (:func:`dfk.runs.lifecycle.deferred_interrupts`) and the yielded Keras callback
    raises ``KeyboardInterrupt`` between batches. A second signal raises at once."""
    import keras

    from dfk.runs.lifecycle import deferred_interrupts

    with deferred_interrupts() as check:
        class StopWhenAsked(keras.callbacks.Callback):
            def _check(self, *args, **kwargs):
                check()

            on_train_batch_end = on_test_batch_end = on_epoch_end = _check

        yield StopWhenAsked()


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


def _unfreeze_last(container, layers: list, n: int, batchnorm: bool = False) -> None:
    """Unfreeze the last ``n`` of the trunk's ``layers`` (``container``: the nested backbone, or a flat
    model itself). BatchNorm stays frozen unless ``batchnorm`` (an ImageNet backbone's statistics were
    learned on far more data than a fine-tuning batch sees; :attr:`dfk.models.ModelSpec.fine_tune_batchnorm`)."""
    import keras

    container.trainable = True
    for i, layer in enumerate(layers):
        trainable = i >= len(layers) - n
        layer.trainable = trainable and (batchnorm or not isinstance(layer, keras.layers.BatchNormalization))


class Fit:
    """The fit phases of one run: :meth:`head`, then :meth:`fine_tune`, then :meth:`restore_best`.

    A model that starts from pretrained features (:func:`dfk.models.starts_pretrained`: an ImageNet
    backbone, dfk's pre-trained forensic trunk) has its trunk (:func:`dfk.models.trunk_layers`) frozen
    while the head learns (the notebook's phase 1), then its last ``fine_tune_at`` trunk layers learn
    from the best head; a model without (trained from random weights, or carrying on from a whole-model
    file) has a single phase, "training". ``history`` holds every epoch's logs, those a resumed run's
    checkpoint holds first; the run's tag ``fit_phases`` lists the phases run."""

    def __init__(self, model, cfg: TrainConfig, place, train_ds, val_ds, ckpt, pretrained: bool,
                 callbacks: Sequence[Any] = ()) -> None:
        from dfk.models import trunk_layers

        self.model, self.cfg, self.place, self.ckpt = model, cfg, place, ckpt
        self.train_ds, self.val_ds, self.callbacks = train_ds, val_ds, callbacks
        container, layers = trunk_layers(model)
        self.trunk = (container, layers) if pretrained and layers else None
        self.history: dict[str, list[float]] = ckpt.history()
        self.phases: list[str] = []
        self.started = time.time()
        self.seconds = 0.0

    def _freeze_trunk(self) -> None:
        container, layers = self.trunk
        if container is self.model:  # a flat model: its trunk's layers, not the head
            for layer in layers:
                layer.trainable = False
        else:
            container.trainable = False

    def head(self) -> int:
        """Phase 1: the head on the frozen trunk (or the whole model); the epoch it ended at."""
        self.started = time.time()
        if self.trunk is None:
            return self.phase(self.cfg.learning_rate, 0, self.cfg.epochs, "training")
        self._freeze_trunk()
        return self.phase(self.cfg.learning_rate, 0, self.cfg.epochs, "phase 1")

    def fine_tune(self, after: int) -> None:
        """Phase 2, from epoch ``after``: the trunk's last ``fine_tune_at`` layers too, from the best
        head however phase 1 ended or was resumed; nothing without a pretrained trunk."""
        cfg = self.cfg
        if self.trunk is None or cfg.fine_tune_at <= 0:
            return
        from dfk.models import get_spec

        self._load_best()
        _unfreeze_last(*self.trunk, cfg.fine_tune_at, get_spec(cfg.arch).fine_tune_batchnorm)
        self.phase(cfg.fine_tune_lr, after, cfg.fine_tune_epochs, f"phase 2 (last {cfg.fine_tune_at} layers)")

    def restore_best(self) -> None:
        """The best weights of the run (lowest val_loss) back in the model."""
        self.seconds = time.time() - self.started
        self._load_best()

    def _load_best(self) -> None:
        if self.ckpt.best.exists():
            self.model.load_weights(str(self.ckpt.best))

    def best_val_loss(self) -> float:
        losses = [v for v in self.history.get("val_loss", []) if math.isfinite(v)]
        return min(losses) if losses else math.inf

    def phase(self, lr: float, first_epoch: int, epochs: int, name: str) -> int:
        """One fit phase; the epoch it ended at (a phase the checkpoint says is over runs no epoch)."""
        import keras

        with self.place.scope():
            compile_model(self.model, lr)
        schedule = schedule_callbacks(self.cfg)
        start, end = self.ckpt.span(name, first_epoch, epochs)
        print(f"[dfk] {name}: epochs {start + 1}-{end}, learning rate {lr:g}", flush=True)
        self._record(f"{name}: learning rate {lr:g}")
        with interrupts_at_batch_end() as stop:
            h = self.model.fit(
                self.train_ds, validation_data=self.val_ds, initial_epoch=first_epoch, epochs=end,
                callbacks=[self.ckpt.best_weights(self.best_val_loss()), *schedule, keras.callbacks.TerminateOnNaN(),
                           *self.ckpt.backup(name, schedule), _epoch_logger(), *self.callbacks, stop],
                verbose=2, shuffle=False,  # the tf.data stream shuffles itself every epoch
            )
        for k, v in h.history.items():
            self.history.setdefault(k, []).extend(float(x) for x in v)
        if any(not math.isfinite(v) for v in self.history.get("loss", [])):
            raise UserError(f"training diverged (NaN loss) in {name}; lower learning_rate (now {lr:g})")
        return self.ckpt.phase_over(name, first_epoch, len(h.history.get("loss", [])))

    def _record(self, phase: str) -> None:
        """The phases run so far, as the run's tag ``fit_phases`` (one per line)."""
        import mlflow

        self.phases.append(phase)
        if mlflow.active_run() is not None:
            mlflow.set_tag("fit_phases", "\n".join(self.phases))
