"""A compact Vision Transformer from Keras layers: patch embedding, encoder blocks, the shared head.

The patch size follows the image size so the token grid is always ``GRID`` x ``GRID``: the
model's cost stays constant per token and Grad-CAM reshapes the last block's tokens to that grid.
"""

from __future__ import annotations

import keras
from keras import layers

from dfk.models.layers import PositionEmbedding, classification_head, image_input

GRID = 16  # tokens per side; 256 px images get the usual 16 px patches
DIM = 128  # token width: small enough to train on a CPU, large enough to learn the artefacts
DEPTH = 4  # encoder blocks
HEADS = 4
MLP_RATIO = 2


def build_vit(image_size: int, dropout: float, dense_units: int) -> keras.Model:
    patch = max(1, image_size // GRID)
    inputs = image_input(image_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(DIM, patch, strides=patch, name="patch_embed")(x)
    grid = image_size // patch
    x = layers.Reshape((grid * grid, DIM), name="tokens")(x)
    x = PositionEmbedding(name="pos_embed")(x)
    for i in range(DEPTH):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = layers.MultiHeadAttention(HEADS, DIM // HEADS, name=f"block{i}_attn")(h, h)
        x = layers.Add(name=f"block{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = layers.Dense(DIM * MLP_RATIO, activation="gelu", name=f"block{i}_mlp1")(h)
        h = layers.Dense(DIM, name=f"block{i}_mlp2")(h)
        x = layers.Add(name=f"block{i}_out")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(x)
    outputs = classification_head(x, dense_units, dropout)
    return keras.Model(inputs, outputs, name="vit")
