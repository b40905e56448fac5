"""The forensic front-ends compute the residuals their papers define, and Grad-CAM maps are fine enough."""

import numpy as np
import pytest

from dfk.explain.gradcam import MIN_GRID, default_layer, gradient_function
from dfk.models import create_model, get_spec, list_models
from dfk.models.layers import NeighbourResidual, SRMResidual, srm_kernels
from tests.conftest import HEAVY


def test_srm_kernels_are_high_pass():
    k = srm_kernels()
    assert k.shape == (3, 5, 5)
    # Each filter sums to zero: a flat image has no residual.
    assert np.allclose(k.sum(axis=(1, 2)), 0, atol=1e-6)


def test_srm_residual_is_zero_on_flat_and_linear_images_and_truncated():
    flat = np.full((1, 16, 16, 3), 128.0, np.float32)
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[None, None, :, None] * 8, (1, 16, 16, 3)).copy()
    layer = SRMResidual()
    # Second-order filters: a linear ramp has no residual away from the zero-padded border.
    assert np.abs(np.asarray(layer(flat))[:, 2:-2, 2:-2]).max() < 1e-5
    assert np.abs(np.asarray(layer(ramp))[:, 2:-2, 2:-2]).max() < 1e-4
    noise = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    out = np.asarray(layer(noise))
    assert out.shape == (1, 16, 16, 9) and np.abs(out).max() <= 3.0 + 1e-6 and np.abs(out).max() > 0.1


def test_npr_residual_vanishes_on_nearest_upsampled_images_only():
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    upsampled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)  # what a generator's nearest up-sampling leaves
    natural = rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    layer = NeighbourResidual()
    assert np.abs(np.asarray(layer(upsampled))).max() < 1e-5
    assert np.abs(np.asarray(layer(natural))).mean() > 0.1
    odd = np.asarray(layer(rng.uniform(0, 255, (1, 15, 15, 3)).astype(np.float32)))
    assert odd.shape == (1, 15, 15, 3) and np.all(odd[:, -1] == 0)


@pytest.mark.parametrize("arch", ["srm", "npr"])
def test_forensic_models_save_and_load_with_their_fixed_front_end(arch, tmp_path):
    import keras

    model, used = create_model(arch, 32, weights="none")
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert used == "random" and np.allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-6)


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a
                                  for a in list_models() if get_spec(a).min_image_size <= 64])
def test_default_gradcam_map_is_at_least_8x8_at_64px(arch):
    model, _ = create_model(arch, 64, weights="none")
    layer = default_layer(model)
    feat, logit = gradient_function(model)(np.zeros((1, 64, 64, 3), np.float32))
    grid = int(np.sqrt(feat.shape[1])) if len(feat.shape) == 3 else min(feat.shape[1:3])
    assert grid >= MIN_GRID, (arch, layer, feat.shape)
    assert logit.shape[0] == 1


def test_a_saved_forensic_model_loads_in_a_fresh_process_as_serving_does(tmp_path):
    """`mlflow models serve` imports dfk.models.layers only: the fixed front-ends must live there."""
    import subprocess
    import sys

    model, _ = create_model("srm", 32, weights="none")
    model.save(tmp_path / "m.keras")
    code = ("import keras, dfk.models.layers; "
            f"m = keras.saving.load_model({str(tmp_path / 'm.keras')!r}, compile=False); print(m.get_layer('srm').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("srm"), out.stderr[-2000:]
