"""Where a run trains: the tf.distribute strategy and the mixed-precision policy.

``strategy=default`` leaves TensorFlow to place everything as it always has (no strategy, no
scope). ``mirrored`` is ``tf.distribute.MirroredStrategy`` over every local GPU, or over every
logical CPU when there is no GPU (one unless the process configured more, as the tests do).
Keras 3 binds a model to the strategy in scope when the model is *created*, so the model is built
and compiled inside :meth:`Devices.scope`; ``fit`` then splits each batch of the input stream
across the replicas, which is why that stream is batched at :meth:`Devices.global_batch`.

Multi-host training (``MultiWorkerMirroredStrategy``) is not offered: with two workers Keras 3's
``fit`` fails before the first step (keras-team/keras#20585; tests/test_strategy.py keeps the evidence).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from dfk.config import MIXED_PRECISION, STRATEGIES  # noqa: F401  (the values a config may hold)


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_mixed_precision(value: str) -> str:
    """``auto`` -> ``on`` where a GPU is present (float16 pays there; on a CPU it is slower), else ``off``.

    The one place "auto" is decided; training logs what it resolved to.
    """
    if value == "auto":
        return "on" if has_gpu() else "off"
    return value


@dataclass(frozen=True)
class Devices:
    """The strategy a run trains under (None: TensorFlow's default placement)."""

    strategy: Any = None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def global_batch(self, batch_size: int) -> int:
        """The batch the input stream yields: ``batch_size`` per replica."""
        return batch_size * self.replicas

    def scope(self):
        """Where the model must be created and compiled."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def for_strategy(strategy: str) -> Devices:
    """The :class:`Devices` for a ``strategy`` value of TrainConfig."""
    if strategy == "default":
        return Devices()
    import tensorflow as tf

    kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return Devices(tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices(kind)]))


@contextlib.contextmanager
def precision(mixed_precision: str) -> Iterator[None]:
    """Keras' global dtype policy for the models built inside: ``mixed_float16`` when ``"on"``.

    The previous policy comes back on exit, so a later run in the same process (a tuning trial, a
    test) starts from what it would have had. Layers keep the policy they were built with, so the
    model stays mixed after exit; its output layer is float32 either way.
    """
    if mixed_precision != "on":
        yield
        return
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
