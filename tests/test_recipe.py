"""The training recipe: no early stop and no learning-rate cut during the warm-up; the notebook's stays available."""

import numpy as np
import pytest

from dfk.config import TrainConfig
from dfk.errors import UserError
from dfk.training.trainer import schedule_callbacks


def _drive(callbacks, val_losses):
    """Feed Keras callbacks a run whose val_loss never improves after the first epoch."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    stopped_at, rates = None, []
    for epoch, v in enumerate(val_losses):
        for cb in callbacks:
            cb.on_epoch_end(epoch, {"val_loss": v, "loss": v})
        rates.append(float(np.asarray(model.optimizer.learning_rate)))
        if model.stop_training:
            stopped_at = epoch + 1
            break
    return stopped_at, rates


def test_a_run_does_not_stop_or_slow_down_during_warm_up():
    cfg = TrainConfig.from_overrides(dict(patience=2, warmup_epochs=6, lr_patience=1, learning_rate=1e-3))
    stopped_at, rates = _drive(schedule_callbacks(cfg), [0.5] + [0.69] * 20)
    # Judged from epoch 7 on: it stops at the earliest after warm-up + patience epochs.
    assert stopped_at is not None and stopped_at >= cfg.warmup_epochs + cfg.patience
    assert all(r == pytest.approx(1e-3) for r in rates[: cfg.warmup_epochs])
    assert rates[-1] < 1e-3  # ReduceLROnPlateau acts after the warm-up


def test_the_notebook_recipe_stops_on_patience_with_a_constant_rate():
    cfg = TrainConfig.from_overrides(dict(patience=2, warmup_epochs=0, lr_patience=0))
    stopped_at, rates = _drive(schedule_callbacks(cfg), [0.5] + [0.69] * 20)
    assert stopped_at == 3 and rates == [pytest.approx(1e-3)] * 3
    assert len(schedule_callbacks(cfg)) == 1


def test_defaults_keep_early_stopping_out_of_the_warm_up_and_are_checked():
    cfg = TrainConfig()
    assert cfg.warmup_epochs >= 1 and cfg.lr_patience >= 1 and cfg.patience == 5  # the notebook's patience
    for bad in ("warmup_epochs=-1", "lr_patience=-2"):
        key, value = bad.split("=")
        with pytest.raises(UserError, match=key):
            TrainConfig.from_overrides({key: value})


def test_image_size_is_native_for_the_builtin_set_and_the_notebooks_for_a_folder():
    from dfk.config import NOTEBOOK_IMAGE_SIZE
    from dfk.data.synth import SynthSpec

    assert TrainConfig().image_size == SynthSpec().image_size
    assert TrainConfig.from_overrides(dict(data_dir="/data/kaggle")).image_size == NOTEBOOK_IMAGE_SIZE == 256
    assert TrainConfig.from_overrides(dict(image_size="auto", arch="xception")).image_size == 71  # its minimum
    assert TrainConfig.from_overrides(dict(image_size="128")).image_size == 128


def test_main_archs_take_per_architecture_overrides_and_fail_early():
    from dfk.settings import SETTINGS
    from dfk.config import parse_archs

    base = TrainConfig.from_overrides(dict(epochs=7))
    configs = parse_archs("srm, resnet:epochs=1:image_size=32", base)
    assert [(c.arch, c.epochs, c.image_size) for c in configs] == [("srm", 7, 64), ("resnet", 1, 32)]
    assert [c.arch for c in parse_archs(SETTINGS.archs, base)][:1] == ["srm"]
    for bad, message in [("alexnet", "unknown architecture"), ("cnn:epochs", "arch:key=value"),
                         ("cnn:bogus=1", "unknown parameter"), (" , ", "archs is empty")]:
        with pytest.raises(UserError, match=message):
            parse_archs(bad, base)
