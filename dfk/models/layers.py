"""Small layers shared by the builders, registered so saved models load anywhere dfk is importable."""

from __future__ import annotations

import keras
from keras import layers, ops


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


def classification_head(x, dense_units: int, dropout: float):
    """The notebook's ResNet head: GAP -> Dense(512, ReLU) -> BN -> Dropout(0.3) -> Dense(1, sigmoid)."""
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    else:
        x = layers.GlobalAveragePooling1D(name="head_pool")(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(1, activation="sigmoid", name="probability_fake", dtype="float32")(x)
