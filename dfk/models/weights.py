"""Where a model's starting weights come from: Keras' cache, a download, dfk itself, a user's file, or nowhere.

The ``weights`` parameter:

* ``auto`` uses ImageNet weights when Keras has them cached or can download them and otherwise
  falls back to random initialisation with one loud warning; ``imagenet`` insists (an error
  offline); ``none`` starts from random. Only the transfer models (``ModelSpec.pretrained``) have
  ImageNet weights; the caller tags the run with the weights actually used.
* ``dfk``: the pre-trained weights dfk ships for its forensic detectors (:func:`shipped_weights`:
  package data listed in ``dfk/models/pretrained/manifest.json``, checked by their SHA-256, never
  downloaded). ``auto`` uses them for an architecture that has them; the run is tagged
  ``dfk:<digest prefix>``.
* ``backbone:PATH``: a backbone-only ("no top") Keras weights file, such as the ImageNet file
  ``dfk weights fetch`` leaves in Keras' cache; transfer models only.
* ``model:PATH``: the weights of the whole model (``Model.save_weights``, a run's checkpoint);
  the models trained from scratch only.
* a bare ``PATH`` means whichever of the two the architecture takes (backbone for a transfer
  model, whole model for the others), as it always has.
"""

from __future__ import annotations

import hashlib
import json
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


#: ``weights=backbone:PATH``: a backbone (no-top) weights file, for the transfer models.
BACKBONE_PREFIX = "backbone:"
#: ``weights=model:PATH``: a whole-model weights file, for the models trained from scratch.
MODEL_PREFIX = "model:"


def split_weights(weights: str) -> tuple[str, str]:
    """``(kind, path)``: kind ``backbone`` or ``model`` for a prefixed value, ``path`` for a bare one,
    else the keyword itself (auto, imagenet, none) and ""."""
    if weights in ("auto", "imagenet", "none"):
        return weights, ""
    for kind, prefix in (("backbone", BACKBONE_PREFIX), ("model", MODEL_PREFIX)):
        if weights.startswith(prefix):
            return kind, weights[len(prefix):]
    return "path", weights


def _existing(path: str, weights: str) -> Path:
    p = Path(path).expanduser()
    if not path or not p.is_file():
        raise UserError(f"weights file {path or '(none given)'} does not exist (weights={weights}); use auto, "
                        "imagenet, none, backbone:PATH or model:PATH (see dfk params)")
    return p


class WeightsFileQuery(Exception):
    """Raised by :func:`resolve_backbone_weights` for :data:`QUERY_FILE`: the cache file name of an
    architecture's ImageNet weights, learnt before anything is built or downloaded."""

    def __init__(self, file_name: str) -> None:
        super().__init__(file_name)
        self.file_name = file_name


#: A ``weights`` value that only asks which file the ImageNet weights are (see :func:`imagenet_file`).
QUERY_FILE = "\0which-file"


def imagenet_file(arch: str) -> str | None:
    """The file name Keras caches ``arch``'s ImageNet backbone weights under; None for an
    architecture without them. The name lives beside the builder (dfk.models.applications), so
    it is asked from there rather than written twice."""
    from dfk.models import create_model, get_spec

    spec = get_spec(arch)
    if not spec.pretrained:
        return None
    try:
        create_model(arch, spec.min_image_size, QUERY_FILE)
    except WeightsFileQuery as answer:
        return answer.file_name
    raise RuntimeError(f"{arch}'s builder does not resolve its weights through resolve_backbone_weights")


def resolve_backbone_weights(weights: str, file_name: str, arch: str) -> tuple[str | None, str]:
    """Translate the ``weights`` parameter into Keras' ``weights=`` argument and a tag value.

    Returns ``(keras_weights, used)`` where ``used`` is ``imagenet``, ``random`` or the file path.
    """
    if weights == QUERY_FILE:
        raise WeightsFileQuery(file_name)
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
    kind, file = split_weights(weights)
    if kind == "model":
        raise UserError(f"{arch} starts from a backbone weights file (weights=backbone:PATH, a no-top Keras file such "
                        f"as {file_name}); whole-model weights (model:PATH) are for the models trained from scratch")
    path = _existing(file, weights)
    return str(path), str(path)


def load_model_weights(model, weights: str) -> str:
    """Load a whole-model weights file (``model:PATH`` or a bare path) into ``model``, an architecture
    without a pretrained backbone; the path loaded."""
    kind, file = split_weights(weights)
    if kind == "backbone":
        raise UserError(f"{model.name} has no pretrained backbone to load {file} into; give the whole model's "
                        "weights as weights=model:PATH")
    p = _existing(file, weights)
    try:
        model.load_weights(str(p))
    except Exception as exc:  # Keras raises several types for a mismatched file
        raise UserError(f"weights file {file} does not fit this model ({model.name}): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return str(p)



# ----------------------------------------------------------------------------- dfk's own weights
#: ``weights=dfk``: the pre-trained weights shipped inside dfk; also the prefix of the run's tag.
DFK = "dfk"
#: Folder of the shipped weights and their manifest, inside the package.
PRETRAINED_DIR = Path(__file__).with_name("pretrained")
#: For tests and experiments only: read the manifest and weights from this folder instead of the package.
PRETRAINED_DIR_ENV = "DFK_PRETRAINED_DIR"
#: The manifest: architecture -> {file, sha256, bytes, image_size, corpus, epochs, run_id, ...}.
MANIFEST = "manifest.json"
#: Characters of the SHA-256 the run's tag carries (``dfk:1a2b3c4d5e6f``).
TAG_DIGEST = 12


def pretrained_dir() -> Path:
    """Where the shipped weights are read from: the package's folder, or $DFK_PRETRAINED_DIR."""
    return Path(os.environ.get(PRETRAINED_DIR_ENV) or PRETRAINED_DIR).expanduser()


def manifest(folder: Path | None = None) -> dict[str, dict]:
    """The shipped weights' manifest (architecture -> entry); empty when there is none."""
    path = (folder or pretrained_dir()) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"dfk's pre-trained weights manifest {path} cannot be read ({exc}): reinstall dfk") from None
    if not isinstance(data, dict):
        raise UserError(f"dfk's pre-trained weights manifest {path} is not a JSON object: reinstall dfk")
    return data


def shipped_archs() -> list[str]:
    """The architectures dfk ships pre-trained weights for."""
    return sorted(manifest())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights(arch: str) -> Path | None:
    """The verified path of dfk's pre-trained weights for ``arch``; None when dfk ships none for it.

    A file the manifest lists that is missing or whose SHA-256 differs from the manifest's is an
    error (a damaged install), never a silent fall-back to random weights."""
    folder = pretrained_dir()
    entry = manifest(folder).get(arch)
    if entry is None:
        return None
    path = folder / str(entry.get("file", ""))
    if not entry.get("file") or not path.is_file():
        raise UserError(f"dfk's shipped weights for {arch} are missing ({path}): reinstall dfk")
    actual = sha256_of(path)
    if actual != entry.get("sha256"):
        raise UserError(f"dfk's shipped weights for {arch} fail their digest check ({path.name}: sha256 "
                        f"{actual[:TAG_DIGEST]}, manifest {str(entry.get('sha256'))[:TAG_DIGEST]}): reinstall dfk")
    return path


def dfk_tag(arch: str) -> str:
    """The run's tag for dfk's weights of ``arch``: ``dfk:`` and the digest prefix."""
    return f"{DFK}:{str(manifest()[arch]['sha256'])[:TAG_DIGEST]}"


def no_shipped_weights(arch: str) -> UserError:
    have = shipped_archs()
    return UserError(f"dfk ships no pre-trained weights for {arch} (weights=dfk); "
                     + (f"it has them for {', '.join(have)}" if have else "this install has none yet")
                     + "; use weights=auto or none")


def load_shipped_weights(model, arch: str, path: Path, build_reference) -> list[str]:
    """Load dfk's weights for ``arch`` from ``path`` into ``model``; the names of the layers left as built.

    The file holds the whole pre-trained model. A model whose head differs (another ``dense_units``)
    takes the trunk and leaves those head layers as initialised (phase 1 trains the head anyway);
    ``build_reference(dense_units)`` builds the model the file was saved from, to copy layer by layer.
    A trunk that does not fit is an error: the file belongs to another version of the architecture."""
    import warnings

    try:
        with warnings.catch_warnings():  # Keras warns of what it skipped before it raises
            warnings.simplefilter("ignore")
            model.load_weights(str(path))
        return []
    except Exception:  # Keras raises several types for a mismatched file
        pass
    entry = manifest().get(arch, {})
    reference = build_reference(entry.get("dense_units"))
    try:
        reference.load_weights(str(path))
    except Exception as exc:
        raise UserError(f"dfk's shipped weights for {arch} do not fit its model ({str(exc).splitlines()[0][:200]}): "
                        "reinstall dfk") from None
    from dfk.models import OUTPUT_LAYER, is_head

    skipped = []
    for source, target in zip(reference.layers, model.layers):
        weights = source.get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in target.weights]:
            target.set_weights(weights)
        elif is_head(target.name) or target.name == OUTPUT_LAYER:
            skipped.append(target.name)
        else:
            raise UserError(f"dfk's shipped weights for {arch} do not fit layer {target.name} of the model: reinstall dfk")
    log.warning("dfk's %s weights: the trunk loaded; head layers %s differ in shape and start from random",
                arch, ", ".join(skipped))
    return skipped
