"""Detectors built for forgery traces: a fixed high-pass front-end before a compact CNN.

Object-recognition backbones look at content; forgeries are told apart by the high-frequency
residual that splicing, re-sampling and re-compression leave. Both detectors here compute that
residual with fixed (not learned) filters at the image's own resolution, then learn from it with
a small convolutional trunk that pools only at the end (global average), so a trace anywhere in
the picture counts the same and the last convolutional map still points at where it was.

* ``srm``: the three SRM rich-model filters (Fridrich & Kodovsky 2012) as DeepfakeBench's SRM
  detector uses them (``SRMConv2d_simple``: a 3x3 and a 5x5 second-order filter and a horizontal
  second-order filter, truncated at +-3), applied to each colour channel, beside the RGB image
  itself (the two streams of Luo et al. 2021): colour and illumination mismatches are not
  high-frequency traces.
* ``npr``: neighbouring-pixel relationships, ``x - up(down(x))`` with nearest-neighbour
  re-sampling by 2 (Tan et al., CVPR 2024), which exposes the local correlation that
  up-sampling layers of generators leave; scaled by 2/3 as the reference code does.

The models are flat (no nested backbone: Grad-CAM reads ``conv4`` directly). Their trunk, what
fine-tuning from dfk's pre-trained weights freezes and then unfreezes (:func:`dfk.models.trunk_layers`),
is every layer from ``conv1`` up to the head, whose layers are named ``head_*``; its length is
``ModelSpec.fine_tune_at`` of these detectors (a test checks it).
"""

from __future__ import annotations

import keras
from keras import layers

from dfk.models.layers import NeighbourResidual, SRMResidual, image_input, probability_output

#: Filters of the trunk's blocks; each block halves the map, so a 64 px input ends at 8x8.
TRUNK_FILTERS = (24, 48, 96, 192)


def _trunk(x, dropout: float, dense_units: int):
    """Conv-BN-ReLU blocks, max-pooled between them, then average and max pooling, Dense, dropout."""
    for i, filters in enumerate(TRUNK_FILTERS, start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation("relu", name=f"relu{i}")(x)
        if i < len(TRUNK_FILTERS):
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    # A forged region covers a small part of the picture: the strongest local evidence (max) decides
    # beside the average, which alone would dilute it by the region's share of the image.
    pooled = layers.Concatenate(name="evidence_pool")([layers.GlobalAveragePooling2D(name="head_avg")(x),
                                                   layers.GlobalMaxPooling2D(name="head_max")(x)])
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(pooled)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return probability_output(x)


def build_srm(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    inputs = image_input(image_size)
    rgb = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Concatenate(name="rgb_and_residual")([rgb, SRMResidual(name="srm")(inputs)])
    return keras.Model(inputs, _trunk(x, dropout, dense_units), name="srm")


def build_npr(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    inputs = image_input(image_size)
    x = NeighbourResidual(name="npr")(inputs)
    return keras.Model(inputs, _trunk(x, dropout, dense_units), name="npr")
