"""The notebook's baseline: five Conv2D+ReLU blocks, each max-pooled, then Dense + dropout."""

from __future__ import annotations

import keras
from keras import layers

from dfk.models.layers import image_input, probability_output

#: Filters of the five conv blocks, doubling as the maps shrink.
FILTERS = (32, 64, 128, 128, 256)


def build_cnn(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    inputs = image_input(image_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)  # the notebook's rescale=1/255
    for i, filters in enumerate(FILTERS, start=1):
        # "same" padding keeps the five poolings valid down to 32 px inputs.
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, probability_output(x), name="cnn")
