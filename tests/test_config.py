import pytest

from dfk.config import TrainConfig, field_comments
from dfk.errors import UserError


def test_defaults_are_the_notebooks_for_a_folder_of_images():
    cfg = TrainConfig.from_overrides(dict(data_dir="/data/deepfake-and-real-images"))
    assert (cfg.image_size, cfg.batch_size, cfg.patience, cfg.augment, cfg.learning_rate) == (256, 32, 5, "flip", 1e-3)


def test_every_field_says_why():
    import dataclasses

    comments = field_comments()
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(comments)


def test_strings_are_parsed_to_field_types():
    cfg = TrainConfig.from_overrides({"epochs": "3", "learning_rate": "1e-4", "dropout": "0.2", "image_size": "64.0"})
    assert cfg.epochs == 3 and cfg.learning_rate == 1e-4 and cfg.dropout == 0.2 and cfg.image_size == 64


def test_none_keeps_the_default():
    assert TrainConfig.from_overrides({"epochs": None}, arch=None).epochs == TrainConfig().epochs


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epoch": "3"}, "unknown parameter 'epoch'"),
        ({"epochs": "three"}, "epochs='three' is not a valid int"),
        ({"epochs": "2.5"}, "not a valid int"),
        ({"epochs": "0"}, "epochs must be at least 1"),
        ({"learning_rate": "2"}, "learning_rate must be between 0 and 1"),
        ({"learning_rate": "nan"}, "not a valid float"),
        ({"arch": "alexnet"}, "unknown architecture 'alexnet'; valid: cnn, resnet"),
        ({"arch": "xception", "image_size": "64"}, "too small for xception"),
        ({"augment": "flip,mixup"}, "unknown augmentation mixup"),
        ({"dropout": "1.5"}, "dropout must be in [0, 1)"),
        ({"val_split": "0.7"}, "val_split must be between 0 and 0.5"),
    ],
)
def test_bad_values_fail_with_one_clear_line(overrides, message):
    with pytest.raises(UserError) as err:
        TrainConfig.from_overrides(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_replace_validates():
    with pytest.raises(UserError):
        TrainConfig().replace(batch_size=0)


def test_a_none_keyword_does_not_hide_an_override():
    assert TrainConfig.from_overrides({"data_dir": "/data"}, data_dir=None).data_dir == "/data"
