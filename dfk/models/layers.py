"""Small layers shared by the builders, registered so saved models load anywhere dfk is importable."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from dfk.models import INPUT_LAYER, OUTPUT_LAYER, TOKEN_POOL


@keras.saving.register_keras_serializable(package="dfk")
class CaffePreprocess(layers.Layer):
    """``keras.applications.resnet.preprocess_input`` as a layer: RGB -> BGR, minus ImageNet means.

    Kept inside the model so training, Grad-CAM and serving all feed raw 0..255 RGB.
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, x):
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(self.MEAN_BGR, dtype=x.dtype)


@keras.saving.register_keras_serializable(package="dfk")
class PositionEmbedding(layers.Layer):
    """A learned position embedding added to a sequence of patch tokens."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, x):
        return x + self.embedding


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


def image_input(image_size: int):
    """The input every model takes: raw 0..255 RGB at the trained size."""
    return keras.Input((image_size, image_size, 3), name=INPUT_LAYER)


def probability_output(x):
    """The output every model gives: the probability of fake (float32 also under mixed precision)."""
    return layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER, dtype="float32")(x)


def classification_head(x, dense_units: int, dropout: float):
    """The notebook's ResNet head: GAP -> Dense(512, ReLU) -> BN -> Dropout(0.3) -> Dense(1, sigmoid)."""
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name=TOKEN_POOL)(x)
    else:
        x = layers.GlobalAveragePooling1D(name=TOKEN_POOL)(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return probability_output(x)
