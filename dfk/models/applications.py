"""Transfer models on keras.applications backbones, all with the notebook's ResNet head.

Each backbone is nested in the model as the layer named ``backbone``; ``dfk.training.trainer`` freezes
it for the first phase and unfreezes its last layers for fine-tuning.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from dfk.models import BACKBONE
from dfk.models.layers import CaffePreprocess, classification_head, image_input
from dfk.models.weights import resolve_backbone_weights


def _transfer_model(
    name: str,
    backbone_fn: Callable[..., keras.Model],
    weights_file: str,
    preprocess: layers.Layer | None,
    image_size: int,
    weights: str,
    dropout: float,
    dense_units: int,
    **backbone_kwargs,
) -> tuple[keras.Model, str]:
    keras_weights, used = resolve_backbone_weights(weights, weights_file, name)
    inputs = image_input(image_size)
    x = preprocess(inputs) if preprocess is not None else inputs
    backbone = backbone_fn(
        include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3), **backbone_kwargs
    )
    backbone.name = BACKBONE
    x = backbone(x)
    outputs = classification_head(x, dense_units, dropout)
    return keras.Model(inputs, outputs, name=name), used


def build_resnet(image_size: int, weights: str, dropout: float, dense_units: int):
    return _transfer_model(
        "resnet", keras.applications.ResNet50, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        CaffePreprocess(name="preprocess"), image_size, weights, dropout, dense_units,
    )


def build_efficientnet(image_size: int, weights: str, dropout: float, dense_units: int):
    # EfficientNet rescales and normalises 0..255 input itself.
    return _transfer_model(
        "efficientnet", keras.applications.EfficientNetB0, "efficientnetb0_notop.h5",
        None, image_size, weights, dropout, dense_units,
    )


def build_xception(image_size: int, weights: str, dropout: float, dense_units: int):
    # xception.preprocess_input is "tf" mode: scale to [-1, 1].
    return _transfer_model(
        "xception", keras.applications.Xception, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess"), image_size, weights, dropout, dense_units,
    )


def build_convnext(image_size: int, weights: str, dropout: float, dense_units: int):
    # ConvNeXt normalises 0..255 input itself (include_preprocessing=True).
    return _transfer_model(
        "convnext", keras.applications.ConvNeXtTiny, "convnext_tiny_notop.h5",
        None, image_size, weights, dropout, dense_units,
    )
