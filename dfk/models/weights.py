"""Where backbone weights come from: Keras' cache, a download, a user's file, or nowhere.

``auto`` uses ImageNet weights when Keras has them cached or can download them and otherwise
falls back to random initialisation with one loud warning; the caller tags the run with the
weights actually used.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from dfk.errors import UserError

log = logging.getLogger(__name__)

#: Host Keras downloads application weights from.
WEIGHTS_HOST = "storage.googleapis.com"


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")))


def cache_path(file_name: str) -> Path:
    """Where ``keras.utils.get_file`` keeps (and looks for) a downloaded weights file."""
    return _keras_home() / "models" / file_name


def _can_download(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((WEIGHTS_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_backbone_weights(weights: str, file_name: str, arch: str) -> tuple[str | None, str]:
    """Translate the ``weights`` parameter into Keras' ``weights=`` argument and a tag value.

    Returns ``(keras_weights, used)`` where ``used`` is ``imagenet``, ``random`` or the file path.
    """
    cached = cache_path(file_name)
    if weights == "none":
        return None, "random"
    if weights == "imagenet":
        if cached.exists() or _can_download():
            return "imagenet", "imagenet"
        raise UserError(
            f"ImageNet weights for {arch} are not cached and cannot be downloaded; "
            f"put {file_name} at {cached} (or pass weights=auto to train from random initialisation)"
        )
    if weights == "auto":
        if cached.exists() or _can_download():
            return "imagenet", "imagenet"
        log.warning(
            "\n%s\nWARNING: ImageNet weights for %s are not cached at %s and cannot be downloaded.\n"
            "Training the whole network from RANDOM initialisation (run tagged backbone_weights=random).\n%s",
            "!" * 78, arch, cached, "!" * 78,
        )
        return None, "random"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {weights} does not exist; use auto, imagenet, none or a path to a weights file")
    return str(path), str(path)


def load_model_weights(model, path: str) -> str:
    """Load a whole-model weights file (for architectures without a pretrained backbone)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file {path} does not exist; use auto, none or a path to a weights file")
    try:
        model.load_weights(str(p))
    except Exception as exc:  # Keras raises several types for a mismatched file
        raise UserError(f"weights file {path} does not fit this model: {str(exc).splitlines()[0]}") from None
    return str(p)
