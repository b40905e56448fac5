"""A built model re-wired onto an input of any height and width, with the same weights: what a
native-resolution model (``ModelSpec.native_resolution``) scores whole pictures with."""

from __future__ import annotations


def any_size_model(model):
    """``model`` (a built functional model whose ``Input`` has a fixed size) re-wired on an input of any
    height and width, with its weights. Nested functional models (a ``backbone``) are re-wired alike. The
    layers are fresh copies holding the same weights, so Grad-CAM can read their outputs. (Needed while the
    models are built with a fixed ``Input(shape=(image_size, image_size, 3))``, which Keras checks on every
    call.) A model whose input already takes any size is returned as it is."""
    import keras

    def rewire(m):
        if all(d is None for d in m.inputs[0].shape[1:-1]):
            return m
        inp = keras.Input((*(None,) * (len(m.inputs[0].shape) - 2), m.inputs[0].shape[-1]),
                          dtype=m.inputs[0].dtype, name=m.inputs[0].name)

        def clone(layer):
            if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
                return rewire(layer)
            return layer.__class__.from_config(layer.get_config())

        return keras.models.clone_model(m, input_tensors=inp, clone_function=clone)

    flexible = rewire(model)
    if flexible is not model:
        flexible.set_weights(model.get_weights())
    return flexible
