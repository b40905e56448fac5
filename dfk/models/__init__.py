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
                  dense_units=128, pretrained=False, learning_rate=2e-3),
        ModelSpec("npr", "dfk.models.forensic:build_npr", "forensic: neighbouring-pixel residual x - up(down(x)), compact CNN",
                  dense_units=128, pretrained=False, learning_rate=2e-3),
    )
}


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown architecture {name!r}; valid: {', '.join(_REGISTRY)}") from None


def create_model(
    name: str,
    image_size: int,
    weights: str = "none",
    dropout: float | None = None,
    dense_units: int | None = None,
) -> tuple["keras.Model", str]:
    """Build ``name`` for RGB inputs in 0..255 at ``image_size``.

    ``None`` overrides keep the model's own defaults. Returns the model and the weights actually
    used for its backbone (``imagenet``, ``random`` or a file path) for the run's tags.
    """
    spec = get_spec(name)
    module_name, fn_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    kwargs: dict[str, Any] = {
        "image_size": image_size,
        "dropout": spec.dropout if dropout is None else dropout,
        "dense_units": spec.dense_units if dense_units is None else dense_units,
    }
    if spec.pretrained:
        kwargs["weights"] = weights
        return builder(**kwargs)
    model = builder(**kwargs)
    used = "random"
    if weights not in ("auto", "none", "imagenet"):
        from dfk.models.weights import load_model_weights

        used = load_model_weights(model, weights)
    elif weights == "imagenet":
        raise UserError(f"{name} has no ImageNet weights; use weights=none or a path to a weights file")
    return model, used
