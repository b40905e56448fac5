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


# ----------------------------------------------------------------------------- what TensorFlow sees
#: Distributions that install the ``tensorflow`` package; more than one installed is a broken venv.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly")


def nvidia_gpus(timeout: float = 10.0) -> list[str]:
    """The GPUs NVIDIA's driver lists (``nvidia-smi -L``), by name; [] where there is no driver."""
    import re
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [m.group(1).strip() for m in re.finditer(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?$", out.stdout, re.M)]


def tensorflow_distributions() -> list[str]:
    """Which of :data:`TENSORFLOW_DISTRIBUTIONS` pip has installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in TENSORFLOW_DISTRIBUTIONS:
        try:
            version(dist)
            found.append(dist)
        except PackageNotFoundError:
            pass
    return found


_announced = False


def describe(announce: bool = True) -> dict[str, str]:
    """What this process trains on, as run tags (``dfk.devices.*``, ``dfk.tensorflow.*``).

    With ``announce``, prints it as one line, and one warning line on stderr where the machine has
    an NVIDIA GPU TensorFlow cannot use (a CPU-only build, or a CUDA build that finds no GPU), or
    where two TensorFlow builds are installed over each other; once per process (a tuning study
    trains many runs in one).
    """
    global _announced
    import os
    import sys

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name)
        except Exception:  # details are best effort; the device itself is what counts
            names.append(gpu.name)
    build = dict(tf.sysconfig.get_build_info())
    cuda_build = bool(build.get("is_cuda_build"))
    dists = tensorflow_distributions()
    driver = nvidia_gpus()
    tags = {
        "dfk.tensorflow.version": tf.__version__,
        "dfk.tensorflow.distribution": ",".join(dists) or "unknown",
        "dfk.tensorflow.cuda_build": str(cuda_build).lower(),
        "dfk.devices.gpus": str(len(gpus)),
        "dfk.devices.nvidia_smi_gpus": str(len(driver)),
    }
    if cuda_build and build.get("cuda_version"):
        tags["dfk.tensorflow.cuda_version"] = str(build["cuda_version"])
    if names:
        tags["dfk.devices.gpu_names"] = ", ".join(names)
    if not announce or _announced:
        return tags
    _announced = True

    kind = f"CUDA {build.get('cuda_version', '')} build".replace("  ", " ") if cuda_build else "CPU-only build"
    seen = f"{len(gpus)} GPU ({', '.join(names)}) and the CPU" if gpus else "the CPU only"
    print(f"[dfk] devices: TensorFlow {tf.__version__} ({kind}, {'+'.join(dists) or '?'}) sees {seen}", flush=True)
    warning = None
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")  # hidden on purpose
    if len(dists) > 1:
        warning = (f"{' and '.join(dists)} are both installed and overwrite each other's files; keep one: "
                   f"pip uninstall -y {' '.join(dists)}, then pip install -e '.[gpu]' (or '.[cpu]')")
    elif driver and not gpus and not hidden:
        why = ("it is a CPU-only build (tensorflow-cpu); pip uninstall -y tensorflow-cpu && pip install -e '.[gpu]'"
               if not cuda_build else
               "it finds no usable GPU (CUDA or cuDNN libraries missing or not matching the driver); "
               "pip install -e '.[gpu]' brings them, and dfk -v shows TensorFlow's own reasons")
        warning = f"this machine has an NVIDIA GPU ({', '.join(driver)}) but TensorFlow trains on the CPU: {why}"
    if warning:
        print(f"dfk: warning: {warning}", file=sys.stderr, flush=True)
    return tags
