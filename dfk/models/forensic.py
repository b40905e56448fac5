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
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


#: Filters of the trunk's blocks; each block halves the map, so a 64 px input ends at 8x8.
TRUNK_FILTERS = (24, 48, 96, 192)
#: Residuals beyond this are clipped, as in SRM (Hardtanh(-3, 3) on inputs scaled to [-1, 1]).
SRM_TRUNCATION = 3.0


def srm_kernels() -> np.ndarray:
    """The three SRM filters of DeepfakeBench's SRM detector, each 5x5, normalised."""
    square3 = np.zeros((5, 5))
    square3[1:4, 1:4] = [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]
    square5 = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                        [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]], float)
    horizontal = np.zeros((5, 5))
    horizontal[2, 1:4] = [1, -2, 1]
    return np.stack([square3 / 4, square5 / 12, horizontal / 2]).astype(np.float32)


@keras.saving.register_keras_serializable(package="dfk")
class SRMResidual(layers.Layer):
    """Fixed SRM high-pass residuals of each RGB channel (9 channels), inputs 0..255."""

    def call(self, x):
        k = srm_kernels()  # (3, 5, 5)
        # Depthwise: every colour channel through every filter -> (5, 5, 3 channels, 3 filters).
        kernel = np.repeat(np.transpose(k, (1, 2, 0))[:, :, None, :], 3, axis=2)
        y = ops.depthwise_conv(x / 127.5 - 1.0, ops.convert_to_tensor(kernel, x.dtype), padding="same")
        return ops.clip(y, -SRM_TRUNCATION, SRM_TRUNCATION)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 9)


@keras.saving.register_keras_serializable(package="dfk")
class NeighbourResidual(layers.Layer):
    """``x - up(down(x))`` with nearest-neighbour re-sampling by 2, inputs 0..255.

    Odd sizes keep the last row/column's residual at zero (it has no 2x2 cell).
    """

    def call(self, x):
        x = x / 127.5 - 1.0
        h, w = x.shape[1], x.shape[2]
        he, we = h - h % 2, w - w % 2
        top_left = x[:, 0:he:2, 0:we:2, :]
        up = ops.repeat(ops.repeat(top_left, 2, axis=1), 2, axis=2)
        residual = x[:, :he, :we, :] - up
        if he != h or we != w:
            residual = ops.pad(residual, [[0, 0], [0, h - he], [0, w - we], [0, 0]])
        return residual * (2.0 / 3.0)

    def compute_output_shape(self, input_shape):
        return input_shape


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
    return layers.Dense(1, activation="sigmoid", name="probability_fake", dtype="float32")(x)


def build_srm(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    rgb = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Concatenate(name="rgb_and_residual")([rgb, SRMResidual(name="srm")(inputs)])
    return keras.Model(inputs, _trunk(x, dropout, dense_units), name="srm")


def build_npr(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = NeighbourResidual(name="npr")(inputs)
    return keras.Model(inputs, _trunk(x, dropout, dense_units), name="npr")
