"""Grad-CAM works for every architecture, batched, and is scored against ground-truth masks."""

import numpy as np
import pytest

from dfk.explain.gallery import overlay
from dfk.explain.gradcam import gradcam, gradient_function, score_against_masks
from dfk.models import create_model, get_spec, list_models


@pytest.mark.parametrize("arch", list_models())
def test_heatmaps_are_finite_non_constant_and_image_sized(arch):
    size = max(64, get_spec(arch).min_image_size + 1)  # backbones downsample 32x: at least a 2x2 map
    model, _ = create_model(arch, size, weights="none")
    images = np.random.default_rng(1).uniform(0, 255, (3, size, size, 3)).astype("float32")
    heat, probs = gradcam(model, images)
    assert heat.shape == (3, size, size) and np.isfinite(heat).all()
    assert all(h.max() > h.min() for h in heat)
    assert 0 <= heat.min() and heat.max() <= 1
    assert np.allclose(probs, np.asarray(model(images, training=False)).reshape(-1), atol=1e-5)


def test_batched_heatmaps_equal_one_by_one():
    model, _ = create_model("cnn", 32, weights="none")
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    fn = gradient_function(model)
    batched, _ = gradcam(model, images, fn=fn)
    single = np.concatenate([gradcam(model, images[i:i + 1], fn=fn)[0] for i in range(4)])
    assert np.allclose(batched, single, atol=1e-4)


def test_a_named_backbone_layer_is_used_and_a_wrong_name_is_a_clear_error():
    from dfk.errors import UserError

    model, _ = create_model("resnet", 64, weights="none")
    heat, _ = gradcam(model, np.zeros((1, 64, 64, 3), "float32") + 100, layer="conv4_block6_out")
    assert heat.shape == (1, 64, 64)
    with pytest.raises(UserError, match="not in the resnet backbone"):
        gradient_function(model, "no_such_layer")


def test_overlay_is_uint8_rgb_of_the_image_size():
    out = overlay(np.zeros((20, 30, 3), np.uint8), np.ones((20, 30), np.float32))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[..., 0].mean() > 40 and out[..., 2].mean() == 0  # JET at 1.0 is dark red, blended at 0.4


def test_faithfulness_scores_a_perfect_and_a_wrong_heatmap():
    masks = np.zeros((10, 32, 32), np.uint8)
    masks[:, 2:10, 4:12] = 255  # off-centre, as built-in forgeries may be
    right = (masks > 0).astype(np.float32)
    wrong = 1.0 - right
    good = score_against_masks(right, masks)
    bad = score_against_masks(wrong, masks)
    assert good.pointing_game == 1.0 and good.mask_energy == 1.0
    assert bad.pointing_game == 0.0 and bad.mask_energy == 0.0
    assert 0 <= good.pointing_game_random <= 0.5 and 0.02 < good.mask_energy_random < 0.2
    assert good.pointing_game_centre == 0.0 and good.beats_baselines and not bad.beats_baselines


def test_centre_prior_baseline_points_at_centred_regions_and_is_the_bar_to_beat():
    centred = np.zeros((6, 32, 32), np.uint8)
    centred[:, 12:20, 12:20] = 255
    f = score_against_masks(np.random.default_rng(0).random((6, 32, 32)).astype(np.float32), centred)
    assert f.pointing_game_centre == 1.0 and f.mask_energy_centre > f.mask_energy_random
    assert not f.beats_baselines  # a heatmap that points no better than "the centre" proves nothing
    assert {"gradcam_pointing_game", "gradcam_pointing_game_centre", "gradcam_mask_energy_centre"} <= set(f.metrics())


def test_builtin_forged_regions_are_spread_over_the_image():
    from dfk.data.synth import SynthSpec, region_mask

    rng = np.random.default_rng(0)
    masks = np.stack([region_mask(rng, 64) for _ in range(300)])
    centre_hit = score_against_masks(np.zeros_like(masks), masks).pointing_game_centre
    ys, xs = zip(*(np.argwhere(m > 0).mean(axis=0) for m in masks))
    areas = masks.mean(axis=(1, 2))
    # Regions sit anywhere and vary in size: the centre prior misses more than a quarter of them.
    assert centre_hit < 0.75 and min(xs) < 16 and max(xs) > 48 and min(ys) < 16 and max(ys) > 48
    assert areas.max() > 3 * areas.min()
    assert SynthSpec().image_size == 64


def test_gradcam_command_writes_overlays_and_a_gallery_and_skips_bad_files(trained_model, tiny_data, tmp_path):
    import shutil

    from PIL import Image
    from typer.testing import CliRunner

    from dfk.cli import app

    images = tmp_path / "images"
    shutil.copytree(tiny_data / "Test" / "Fake", images)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (images / "notes.txt").write_text("ignored")
    single = sorted((tiny_data / "Test" / "Real").glob("*.jpg"))[0]
    result = CliRunner().invoke(app, ["gradcam", str(trained_model), str(images), str(single), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    overlays = sorted((tmp_path / "out").glob("*_gradcam.png"))
    assert len(overlays) == 7
    assert Image.open(overlays[0]).size == (32, 32)
    assert Image.open(tmp_path / "out" / "gallery.png").size[1] > 7 * 100
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr


@pytest.mark.parametrize("uri", ["runs:/0123456789abcdef/model", "models:/nope@champion", "/no/such/model"])
def test_gradcam_with_a_model_uri_that_does_not_resolve_exits_2(uri, tiny_data):
    from typer.testing import CliRunner

    from dfk.cli import app

    result = CliRunner().invoke(app, ["gradcam", uri, str(tiny_data / "Test" / "Fake")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dfk: error: cannot load model"), result.stderr
