"""The architecture registry: one name -> one builder, with per-model facts beside it.

Importing this module is cheap (no TensorFlow); a builder's module is imported only when that
model is built. Adding an architecture is one builder function in a family module and one line
in ``_REGISTRY``. Nothing else in dfk names an architecture.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfk.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import keras


#: Layer names every built model shares: training, Grad-CAM and serving find layers by these.
INPUT_LAYER = "image"  # raw 0..255 RGB; each model normalises inside itself
OUTPUT_LAYER = "probability_fake"
BACKBONE = "backbone"  # a transfer model's nested keras.applications network
TOKEN_POOL = "head_pool"  # the head's pooling; on a transformer its input is the last block's tokens
HEAD_PREFIX = "head"  # the classification head's layers are named head_*; a flat model's trunk is what comes before


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: str  # "module:function", imported lazily
    description: str
    min_image_size: int = 32  # keras.applications refuses smaller inputs
    dropout: float = 0.3  # the notebook's ResNet head used Dropout(0.3)
    dense_units: int = 512  # the notebook's ResNet head used Dense(512)
    pretrained: bool = True  # has ImageNet weights to load
    learning_rate: float = 1e-3  # Adam's default, which the notebook used unchanged
    # Trunk layers phase 2 unfreezes (from the end) after the head learnt on the frozen pretrained trunk: 0 keeps
    # the notebook's frozen ResNet. From dfk's own weights (the forensic detectors) 0 means no frozen phase at
    # all: the whole net trains from them in one phase, which measured as good as scratch on the built-in set
    # where a frozen-trunk phase 1 cost ROC-AUC (docs/TRAINING.md); N > 0 asks for the two-phase recipe.
    fine_tune_at: int = 0
    # Phase 2's learning rate: small enough not to destroy ImageNet's features; for the forensic detectors a
    # tenth of their from-scratch rate, so the whole small trunk can move within a few epochs.
    fine_tune_lr: float = 1e-5
    # BatchNorm learns in phase 2 too. No for ImageNet backbones (statistics learnt on far more data than a
    # fine-tuning batch sees); yes for dfk's forensic trunks, whose statistics come from a synthetic corpus
    # that a user's own images should replace.
    fine_tune_batchnorm: bool = False
    # Sees an image at its own resolution (random crops of the input size in training, the whole picture
    # when scoring) instead of resized to the input size: re-sampling erases the traces a forensic detector reads.
    native_resolution: bool = False


#: How the forensic detectors fine-tune from dfk's pre-trained weights when fine_tune_at asks for two phases.
_FORENSIC_FINE_TUNING: dict[str, Any] = dict(fine_tune_lr=2e-4, fine_tune_batchnorm=True)

_REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("cnn", "dfk.models.cnn:build_cnn", "the notebook's 5-conv baseline", dropout=0.5, pretrained=False),
        ModelSpec("resnet", "dfk.models.applications:build_resnet", "ResNet50 transfer model of the notebook"),
        ModelSpec("efficientnet", "dfk.models.applications:build_efficientnet", "EfficientNetB0 backbone"),
        ModelSpec("xception", "dfk.models.applications:build_xception", "Xception, the usual deepfake baseline", min_image_size=71),
        ModelSpec("convnext", "dfk.models.applications:build_convnext", "ConvNeXtTiny backbone"),
        ModelSpec("vit", "dfk.models.vit:build_vit", "compact Vision Transformer", pretrained=False),
        ModelSpec("srm", "dfk.models.forensic:build_srm", "forensic: RGB + fixed SRM high-pass residuals, compact CNN",
                  dense_units=128, pretrained=False, learning_rate=2e-3, native_resolution=True, **_FORENSIC_FINE_TUNING),
        ModelSpec("npr", "dfk.models.forensic:build_npr", "forensic: neighbouring-pixel residual x - up(down(x)), compact CNN",
                  dense_units=128, pretrained=False, learning_rate=2e-3, native_resolution=True, **_FORENSIC_FINE_TUNING),
    )
}


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown architecture {name!r}; valid: {', '.join(_REGISTRY)}") from None


def is_head(layer_name: str) -> bool:
    """Whether a layer belongs to a model's classification head (named :data:`HEAD_PREFIX`_*)."""
    return layer_name.startswith(HEAD_PREFIX)


def trunk_layers(model) -> tuple[Any, list]:
    """``(container, layers)`` the two-phase recipe freezes while the head learns and unfreezes from the
    end for fine-tuning: a transfer model's nested backbone and its layers, or, for a flat model, the
    model and its layers from the first with weights up to the head (a fixed front-end has none)."""
    try:
        backbone = model.get_layer(BACKBONE)
        return backbone, list(backbone.layers)
    except ValueError:
        pass
    layers = []
    for layer in model.layers[1:]:
        if is_head(layer.name) or layer.name == OUTPUT_LAYER:
            break
        if layers or layer.weights:
            layers.append(layer)
    return model, layers


def starts_pretrained(arch: str, used: str, fine_tune_at: int = 0) -> bool:
    """Whether a model that started from ``used`` (:func:`create_model`'s second value) keeps its
    pretrained features frozen while its head learns (phase 1): ImageNet or a backbone file for a
    transfer model, the notebook's recipe; dfk's own weights only when ``fine_tune_at`` asks for the
    two-phase recipe (by default the whole net trains from them). A whole-model file (``model:PATH``)
    carries on training as a whole."""
    from dfk.models.weights import DFK

    if used == "random":
        return False
    return get_spec(arch).pretrained or (used.startswith(f"{DFK}:") and fine_tune_at > 0)


def create_model(
    name: str,
    image_size: int,
    weights: str = "none",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> tuple["keras.Model", str]:
    """Build ``name`` for RGB inputs in 0..255 at ``image_size``.

    ``None`` overrides keep the model's own defaults. Returns the model and the weights actually
    used for its backbone (``imagenet``, ``random``, ``dfk:<digest prefix>`` or a file path) for the
    run's tags. ``weights=auto`` takes dfk's shipped weights where the architecture has them.
    """
    spec = get_spec(name)
    module_name, fn_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    kwargs: dict[str, Any] = {
        "image_size": image_size,
        "dropout": spec.dropout if dropout is None else dropout,
        "dense_units": spec.dense_units if dense_units is None else dense_units,
    }
    from dfk.models import weights as w

    shipped = w.shipped_weights(name) if weights in ("auto", w.DFK) else None  # verified, or an error
    if weights == w.DFK and shipped is None:
        raise w.no_shipped_weights(name)
    if spec.pretrained:
        if shipped is None:
            return builder(**kwargs, weights=weights)
        kwargs["weights"] = "none"  # a transfer model's builder also returns what it loaded

    def build(**overrides):
        built = builder(**{**kwargs, **overrides})
        return built[0] if spec.pretrained else built

    model = build()
    if shipped is not None:
        w.load_shipped_weights(model, name, shipped, lambda units: build(dense_units=units or spec.dense_units))
        return model, w.dfk_tag(name)
    used = "random"
    if weights not in ("auto", "none", "imagenet"):
        used = w.load_model_weights(model, weights)
    elif weights == "imagenet":
        raise UserError(f"{name} has no ImageNet weights; use weights=none, dfk (dfk's own, for "
                        f"{', '.join(w.shipped_archs()) or 'no architecture in this install'}) or a path to a weights file")
    return model, used
