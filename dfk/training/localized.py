"""Pre-training with the forged region as a second target (Face X-ray's dense supervision).

One label per picture says *that* a picture was forged, not *where*: on subtle self-blends a detector
trained on labels alone learns slowly (the pre-training corpus' srm reached validation ROC-AUC 0.58
after 10 epochs of 16,000 pictures). Face X-ray (Li et al., CVPR 2020) supervises every location
with the blending mask instead. Here a 1x1 convolution on the trunk's last feature map predicts,
for each cell, the share of it that was forged (the synthetic set's masks, area-averaged to the
map's size; all zero for a real picture), trained jointly with the classifier's label. The region
head exists only while pre-training: what is kept is the model as :func:`dfk.models.create_model`
builds it, so the weights load with ``weights=dfk`` like any whole-model file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfk.config import TrainConfig

#: The pre-training-only head that predicts each cell's forged share.
REGION_HEAD = "region_head"


@dataclass
class LocalizedResult:
    model: object  # the detector as create_model builds it, with its best weights
    history: dict[str, list[float]]
    test_roc_auc: float


def _pictures(index, split: str, size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split in memory: pictures (uint8), labels, and each picture's forged share per cell."""
    import cv2
    from PIL import Image

    from dfk.data.decode import decode_image, read_bytes
    from dfk.data.synth import mask_path

    paths, labels = index.paths(split), index.labels(split)
    x = np.zeros((len(paths), size, size, 3), np.uint8)
    region = np.zeros((len(paths), cells, cells, 1), np.float32)
    for i, (path, label) in enumerate(zip(paths, labels)):
        x[i] = decode_image(read_bytes(path), size)  # dfk's own decoder: the checks and resize every model gets
        mask = mask_path(path) if label else None
        if mask is not None:
            m = np.asarray(Image.open(mask).convert("L"), np.float32) / 255.0
            region[i, ..., 0] = cv2.resize(m, (cells, cells), interpolation=cv2.INTER_AREA)
    return x, np.asarray(labels, np.float32), region


def _stream(x, y, region, batch_size: int, seed: int, train: bool):
    import tensorflow as tf

    from dfk.models import OUTPUT_LAYER

    ds = tf.data.Dataset.from_tensor_slices((x, {OUTPUT_LAYER: y, REGION_HEAD: region}))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

        def flip(image, targets):  # the picture and its region map together
            if tf.random.uniform(()) < 0.5:
                return tf.reverse(image, [1]), {**targets, REGION_HEAD: tf.reverse(targets[REGION_HEAD], [1])}
            return image, targets

        ds = ds.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pretrain_localized(cfg: TrainConfig, index, region_weight: float, log=None) -> LocalizedResult:
    """Train ``cfg.arch`` from scratch on ``index`` (a synthetic set with masks) on its label and its
    forged region (loss weight ``region_weight``; 0 trains on labels alone). ``log(key, value, step)``
    receives every epoch's figures. The best epoch (lowest validation loss of the label) is kept."""
    import keras
    from sklearn.metrics import roc_auc_score

    from dfk.models import OUTPUT_LAYER, create_model, trunk_layers

    keras.utils.set_random_seed(cfg.seed)
    model, _ = create_model(cfg.arch, cfg.image_size, weights="none", dropout=cfg.dropout, dense_units=cfg.dense_units)
    _, trunk = trunk_layers(model)
    features = trunk[-1].output
    region = keras.layers.Conv2D(1, 1, activation="sigmoid", name=REGION_HEAD)(features)
    joint = keras.Model(model.inputs, {OUTPUT_LAYER: model.output, REGION_HEAD: region})
    joint.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss={OUTPUT_LAYER: "binary_crossentropy", REGION_HEAD: "binary_crossentropy"},
                  loss_weights={OUTPUT_LAYER: 1.0, REGION_HEAD: region_weight},
                  metrics={OUTPUT_LAYER: [keras.metrics.AUC(name="auc")]})
    cells = int(features.shape[1])
    data = {s: _pictures(index, s, cfg.image_size, cells) for s in ("train", "validation", "test")}
    watch = f"val_{OUTPUT_LAYER}_loss"

    class Best(keras.callbacks.Callback):
        """Keeps the weights of the epoch with the lowest validation loss of the label, and logs."""

        def __init__(self):
            super().__init__()
            self.best, self.weights = math.inf, None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if log is not None:
                for k, v in logs.items():
                    log(k, float(v), epoch)
            if logs.get(watch, math.inf) < self.best:
                self.best, self.weights = logs[watch], model.get_weights()

    best = Best()
    h = joint.fit(_stream(*data["train"], cfg.batch_size, cfg.seed, True),
                  validation_data=_stream(*data["validation"], cfg.batch_size, cfg.seed, False),
                  epochs=cfg.epochs, verbose=2,
                  callbacks=[best, keras.callbacks.ReduceLROnPlateau(watch, factor=0.5, patience=max(1, cfg.lr_patience), mode="min"),
                             keras.callbacks.EarlyStopping(watch, patience=cfg.patience, mode="min",
                                                           start_from_epoch=cfg.warmup_epochs)])
    if best.weights is not None:
        model.set_weights(best.weights)
    x, y, _ = data["test"]
    p = model.predict(x, batch_size=cfg.batch_size, verbose=0).ravel()
    return LocalizedResult(model, {k: [float(v) for v in vs] for k, vs in h.history.items()},
                           float(roc_auc_score(y, p)))


def weights_name(arch: str) -> str:
    """The file name of ``arch``'s whole-model weights, in a pre-training run and in the package."""
    return f"{arch}.weights.h5"


def save_weights(model, folder: Path, arch: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights_name(arch)
    model.save_weights(path)
    return path
