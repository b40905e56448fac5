import numpy as np
import pytest

from dfk.config import TrainConfig
from dfk.data.pipeline import DecodeFailures, make_dataset
from dfk.data.scan import scan


def test_eval_stream_keeps_file_order_and_labels(tiny_data):
    index = scan(tiny_data)
    failures = DecodeFailures()
    ds = make_dataset(index.paths("test"), index.labels("test"), 32, 5, failures, with_paths=True)
    xs, ys, paths = zip(*[(x.numpy(), y.numpy(), [p.decode() for p in ps.numpy()]) for x, y, ps in ds])
    assert [p for batch in paths for p in batch] == index.paths("test")
    assert np.concatenate(ys).tolist() == index.labels("test")
    x = np.concatenate(xs)
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255


def test_files_that_fail_while_streaming_are_skipped_and_recorded(tiny_data, tmp_path):
    index = scan(tiny_data)
    paths = index.paths("train")[:4]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0] and open(paths[0], "rb").read()[:-300])
    failures = DecodeFailures()
    ds = make_dataset([*paths, str(broken)], [0, 0, 1, 1, 1], 32, 8, failures)
    n = sum(int(x.shape[0]) for x, _ in ds)
    assert n == 4
    assert [p for p, _ in failures.items()] == [str(broken)]


@pytest.mark.parametrize("augment", ["flip", "rotation,zoom", "brightness", "jpeg", "blur",
                                     "flip,rotation,zoom,brightness,jpeg,blur"])
def test_augmentations_run_on_training_data_only(tiny_data, augment):
    index = scan(tiny_data)
    cfg = TrainConfig(augment=augment, aug_blur_sigma=2.0, aug_jpeg_quality=20, aug_brightness=0.3)
    paths, labels = index.paths("train")[:8], index.labels("train")[:8]
    common = dict(image_size=32, batch_size=8, failures=DecodeFailures())
    clean = next(iter(make_dataset(paths, labels, with_paths=True, **common)))[0].numpy()
    train = make_dataset(paths, labels, training=True, cfg=cfg, seed=1, with_paths=True, **common)
    x, y, p = next(iter(train))
    order = [paths.index(s.decode()) for s in p.numpy()]
    x = x.numpy()
    assert x.shape == clean.shape and 0 <= x.min() and x.max() <= 255 and np.isfinite(x).all()
    assert not np.allclose(x, clean[order])  # something changed
    again = next(iter(make_dataset(paths, labels, cfg=cfg, with_paths=True, **common)))[0].numpy()
    assert np.array_equal(again, clean)  # evaluation streams are never augmented


@pytest.mark.parametrize("cache_bytes", [64 * 2**20, 0])
def test_training_stream_reshuffles_every_epoch_whether_kept_in_memory_or_streamed(tiny_data, monkeypatch, cache_bytes):
    from dfk.data import pipeline

    monkeypatch.setattr(pipeline, "CACHE_BYTES", cache_bytes)
    index = scan(tiny_data)
    paths, labels = index.paths("train"), index.labels("train")
    ds = make_dataset(paths, labels, 32, 64, DecodeFailures(), training=True,
                      cfg=TrainConfig(augment="none"), seed=3, with_paths=True)
    epochs = [[s.decode() for s in next(iter(ds))[2].numpy()] for _ in range(3)]
    assert all(sorted(e) == sorted(paths) for e in epochs)  # every image, once, each epoch
    assert len({tuple(e) for e in epochs}) > 1  # in a new order


def test_a_batch_is_mirrored_image_by_image():
    import tensorflow as tf

    from dfk.data.pipeline import _mirror_some

    images = np.random.default_rng(0).integers(0, 256, (64, 5, 7, 3), dtype=np.uint8)
    out = _mirror_some(tf.constant(images), seed=1).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    same = [np.array_equal(o, x) for o, x in zip(out, images)]
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)]
    assert all(s or m for s, m in zip(same, mirrored))  # each image whole, as it was or mirrored
    assert 16 < sum(mirrored) < 48  # about half
    assert _mirror_some(tf.zeros((0, 5, 7, 3), tf.uint8), seed=1).shape == (0, 5, 7, 3)
