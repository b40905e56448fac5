"""Every architecture in the registry builds, runs on tiny input and gives finite probabilities."""

import numpy as np
import pytest

from dfk.errors import UserError
from dfk.models import create_model, get_spec, list_models


def _size(arch):
    return max(32, get_spec(arch).min_image_size + 1)


@pytest.mark.parametrize("arch", list_models())
def test_builds_and_predicts_probabilities(arch):
    size = _size(arch)
    model, used = create_model(arch, size, weights="none")
    assert used == "random"
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    p = np.asarray(model(x, training=False))
    assert p.shape == (2, 1) and np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all()


@pytest.mark.parametrize("arch", ["srm", "npr"])
def test_a_forensic_trunk_is_its_15_layers_before_the_head(arch):
    """The two-phase recipe's trunk of a flat model: from its first layer with weights up to its head."""
    from dfk.explain.gradcam import default_layer
    from dfk.models import trunk_layers

    model, _ = create_model(arch, 64, weights="none")
    container, layers = trunk_layers(model)
    assert container is model and len(layers) == 15  # conv, BN, ReLU x 4 and the 3 pools between
    assert layers[0].name == "conv1" and all(not layer.name.startswith("head") for layer in layers)
    assert default_layer(model) == "conv4"  # Grad-CAM's target is the one it had before the trunk was named


def test_a_transfer_models_trunk_is_its_nested_backbone():
    from dfk.models import trunk_layers

    model, _ = create_model("resnet", 32, weights="none")
    container, layers = trunk_layers(model)
    assert container is model.get_layer("backbone") and layers == list(container.layers)


def test_transfer_models_nest_their_backbone_and_share_the_notebook_head():
    model, _ = create_model("resnet", 32, weights="none")
    names = [layer.name for layer in model.layers]
    assert names[-6:] == ["backbone", "head_pool", "head_dense", "head_bn", "head_dropout", "probability_fake"]
    assert model.get_layer("head_dense").units == 512 and model.get_layer("head_dropout").rate == 0.3


def test_none_overrides_keep_the_models_own_defaults():
    model, _ = create_model("cnn", 32, weights="none", dropout=None, dense_units=None)
    assert model.get_layer("dropout").rate == 0.5
    model, _ = create_model("cnn", 32, weights="none", dropout=0.1, dense_units=16)
    assert model.get_layer("dropout").rate == 0.1 and model.get_layer("dense").units == 16


def test_cnn_is_the_notebooks_five_conv_baseline():
    model, _ = create_model("cnn", 64, weights="none")
    convs = [layer for layer in model.layers if layer.name.startswith("conv")]
    pools = [layer for layer in model.layers if layer.name.startswith("pool")]
    assert len(convs) == 5 and len(pools) == 5


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid: cnn, resnet, efficientnet, xception, convnext, vit, srm, npr"):
        create_model("alexnet", 64)


def test_imagenet_weights_offline_name_the_file_and_where_to_put_it(monkeypatch, tmp_path):
    from dfk.models import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "_can_download", lambda timeout=3.0: False)
    with pytest.raises(UserError) as err:
        create_model("resnet", 32, weights="imagenet")
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(err.value)
    assert str(tmp_path / "keras" / "models") in str(err.value)


def test_auto_weights_offline_fall_back_to_random_loudly(monkeypatch, tmp_path, caplog):
    from dfk.models import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "_can_download", lambda timeout=3.0: False)
    _, used = create_model("efficientnet", 32, weights="auto")
    assert used == "random"
    assert "RANDOM initialisation" in caplog.text


def test_weights_file_round_trip_and_missing_file(tmp_path):
    model, _ = create_model("cnn", 32, weights="none")
    path = tmp_path / "cnn.weights.h5"
    model.save_weights(path)
    again, used = create_model("cnn", 32, weights=str(path))
    assert used == str(path)
    x = np.ones((1, 32, 32, 3), "float32")
    assert np.allclose(model(x), again(x))
    with pytest.raises(UserError, match="does not exist"):
        create_model("cnn", 32, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="does not exist"):
        create_model("resnet", 32, weights=str(tmp_path / "missing.h5"))


def test_resnet_loads_a_backbone_weights_file_and_trains_its_head_on_it_as_the_notebook_did(tmp_path, tiny_data):
    """The notebook's path with pretrained weights: a file the test writes stands in for ImageNet's."""
    import keras
    import mlflow

    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    keras.utils.set_random_seed(3)
    donor = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    donor.save_weights(path)

    model, used = create_model("resnet", 32, weights=str(path))
    assert used == str(path)
    backbone = model.get_layer("backbone")
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), donor.get_weights()))

    cfg = TrainConfig.from_overrides(dict(arch="resnet", data_dir=str(tiny_data), image_size=32, batch_size=8,
                                          epochs=1, weights=str(path), gradcam_images=0))
    result = train(cfg, experiment="pretrained")
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["backbone_weights"] == str(path)
    # Phase 1 trains the head only: the pretrained backbone comes out of training unchanged.
    trained = result.model.get_layer("backbone")
    assert all(np.array_equal(a, b) for a, b in zip(trained.get_weights(), donor.get_weights()))
    assert "phase 2" not in str(run.data.params)
