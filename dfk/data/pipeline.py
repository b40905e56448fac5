"""The tf.data input pipeline: stream image files from disk, decode in parallel, augment, batch.

A training set whose decoded pixels fit :data:`CACHE_BYTES` is decoded once and kept in memory;
a larger one streams, holding only file paths (the shuffle buffer holds paths, not pixels), so
memory never grows past that budget with the dataset. Files that fail to decode are dropped from the stream and recorded in
a :class:`DecodeFailures` list that the training run logs.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import tensorflow as tf

from dfk.config import TrainConfig
from dfk.data.decode import BadImage, read_image

AUTOTUNE = tf.data.AUTOTUNE
#: Training sets whose decoded pixels (uint8) fit in this many bytes are decoded once and kept in memory.
CACHE_BYTES = 64 * 2**20


class DecodeFailures:
    """Thread-safe record of files that failed while streaming (decode runs on tf.data threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self._items[path] = reason

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._items.items())

    def __len__(self) -> int:
        return len(self._items)


def _decoder(size: int, failures: DecodeFailures):
    blank = np.zeros((size, size, 3), np.uint8)

    def load(path: bytes):
        p = path.decode()
        try:
            return read_image(p, size), True
        except BadImage as exc:
            failures.add(p, str(exc))
            return blank, False

    return load


def _gaussian_blur(image: tf.Tensor, max_sigma: float, seed: int | None) -> tf.Tensor:
    """Blur with a random sigma in [0, max_sigma] (separable depthwise convolution)."""
    radius = max(1, int(np.ceil(3 * max_sigma)))
    sigma = tf.random.uniform([], 0.0, max_sigma, seed=seed)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2 * tf.maximum(sigma, 1e-3) ** 2))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image[None], kx, [1, 1, 1, 1], "SAME")
    out = tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "SAME")[0]
    return out


def augmenter(cfg: TrainConfig):
    """Per-image training augmentation on float32 0..255 images, or None when none is asked for."""
    augs = cfg.augmentations
    if not augs:
        return None
    import keras

    geometric = []
    if "rotation" in augs and cfg.aug_rotation > 0:
        geometric.append(keras.layers.RandomRotation(cfg.aug_rotation, fill_mode="reflect", seed=cfg.seed))
    if "zoom" in augs and cfg.aug_zoom > 0:
        geometric.append(keras.layers.RandomZoom(cfg.aug_zoom, fill_mode="reflect", seed=cfg.seed))
    seed = cfg.seed

    def augment(image: tf.Tensor) -> tf.Tensor:
        if "flip" in augs:
            image = tf.image.random_flip_left_right(image, seed=seed)
        for layer in geometric:
            image = layer(image, training=True)
        if "brightness" in augs and cfg.aug_brightness > 0:
            image = image + tf.random.uniform([], -cfg.aug_brightness, cfg.aug_brightness, seed=seed) * 255.0
        if "blur" in augs and cfg.aug_blur_sigma > 0:
            image = _gaussian_blur(image, cfg.aug_blur_sigma, seed)
        image = tf.clip_by_value(image, 0.0, 255.0)
        if "jpeg" in augs and cfg.aug_jpeg_quality < 100:
            image = tf.image.random_jpeg_quality(image / 255.0, cfg.aug_jpeg_quality, 100, seed=seed) * 255.0
        return image

    return augment


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    batch_size: int,
    failures: DecodeFailures,
    training: bool = False,
    cfg: TrainConfig | None = None,
    with_paths: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(images float32 0..255, labels float32)``, plus paths when ``with_paths``.

    Training streams are shuffled every epoch and augmented as ``cfg`` says; evaluation streams
    keep file order so results line up with paths.
    """
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.float32)))
    # A set whose decoded pixels fit the budget is decoded once and kept (every later epoch skips
    # the decoder, which competes with training for the CPU); a larger one streams from disk.
    in_memory = training and len(paths) * image_size * image_size * 3 <= CACHE_BYTES
    if training and not in_memory:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    load = _decoder(image_size, failures)

    def decode(path, label):
        image, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool], stateful=False)
        image.set_shape((image_size, image_size, 3))
        ok.set_shape(())
        return image, label, path, ok

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=not training)
    ds = ds.filter(lambda image, label, path, ok: ok)
    if in_memory:  # kept as uint8, shuffled after the cache so every epoch gets a new order
        ds = ds.cache().shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda image, label, path, ok: (tf.cast(image, tf.float32), label, path, ok))
    aug = augmenter(cfg) if (training and cfg is not None) else None
    if aug is not None:
        ds = ds.map(lambda image, label, path, ok: (aug(image), label, path, ok), num_parallel_calls=AUTOTUNE)
    if with_paths:
        ds = ds.map(lambda image, label, path, ok: (image, label, path))
    else:
        ds = ds.map(lambda image, label, path, ok: (image, label))
    return ds.batch(batch_size).prefetch(AUTOTUNE)
