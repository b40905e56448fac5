"""Native resolution: a forensic model trains on crops of a picture at its own resolution and every entry
point (dfk predict, the pyfunc, `mlflow models serve`, the app, evaluation, the run's own test scores,
Grad-CAM) scores a picture the same way, to the same probability; a model that resizes is unchanged."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from dfk.data import decode, views
from dfk.data.decode import decode_image
from dfk.data.pipeline import DecodeFailures, make_dataset
from dfk.data.views import NATIVE_MAX_SIDE, decode_views, larger_than_input, native_dims, scoring_views

SIZE = 32  # the model's input; the tiny set's pictures are 64 px, so a native model crops them


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(9 * x * y + 1)], -1)
    return np.clip((base + 1) * 110 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _encoded(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ----------------------------------------------------------------------------- the rule
def test_pictures_larger_than_the_input_are_cropped_or_scored_whole_and_smaller_ones_resized():
    assert native_dims(150, 200, 64) == (150, 200)
    assert native_dims(64, 64, 64) is None and native_dims(40, 300, 64) is None  # resized, as for any model
    h, w = native_dims(1500, 3000, 64)
    assert max(h, w) == NATIVE_MAX_SIDE and abs(h / w - 0.5) < 0.01
    pic = _photo(200, 150)
    assert scoring_views(pic, 64, native=True).shape == (1, 150, 200, 3)
    assert scoring_views(pic, 64, native=True, how="crops").shape[1:] == (64, 64, 3)
    assert np.array_equal(scoring_views(pic, 64, native=False)[0], decode.resize(pic, 64))
    data = _encoded(pic)
    assert np.array_equal(decode_views(data, 64, False)[0], decode_image(data, 64))  # a resizing model: as before
    small = _encoded(_photo(30, 20))
    assert np.array_equal(decode_views(small, 64, True)[0], decode_image(small, 64))


def test_any_size_model_takes_pictures_of_any_size_with_the_same_weights_nested_models_too():
    import keras

    from dfk.models.any_size import any_size_model

    inner_in = keras.Input((SIZE, SIZE, 3))
    backbone = keras.Model(inner_in, keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inner_in),
                           name="backbone")
    image = keras.Input((SIZE, SIZE, 3), name="image")
    y = keras.layers.GlobalAveragePooling2D()(backbone(keras.layers.Rescaling(1 / 255)(image)))
    model = keras.Model(image, keras.layers.Dense(1, activation="sigmoid")(y))
    flexible = any_size_model(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    assert np.abs(np.asarray(flexible(x)) - np.asarray(model(x))).max() < 1e-6
    assert flexible(np.zeros((1, 50, 70, 3), np.float32)).shape == (1, 1)
    assert flexible.get_layer("backbone").inputs[0].shape[1:3] == (None, None)
    assert any_size_model(flexible) is flexible  # already any size: as it is


def _files(tmp_path: Path) -> tuple[list[str], dict]:
    from dfk.data.scan import probe

    specs = [(200, 150, "JPEG"), (200, 150, "PNG"), (1500, 1100, "JPEG"), (1300, 700, "PNG"), (64, 48, "PNG"),
             (20, 16, "JPEG"), (300, 40, "JPEG"), (SIZE, SIZE, "PNG")]
    paths = []
    for i, (w, h, fmt) in enumerate(specs):
        p = tmp_path / f"{i}_{w}x{h}.{fmt.lower()}"
        p.write_bytes(_encoded(_photo(w, h, i), fmt))
        paths.append(str(p))
    return paths, {p: probe(p) for p in paths}


def _pixels(ds) -> dict[str, np.ndarray]:
    return {p.decode(): x for xs, _, ps in ds for x, p in zip(xs.numpy(), ps.numpy())}


def test_training_crops_are_the_same_pixels_from_tensorflow_and_pillow_and_change_every_epoch(tmp_path):
    paths, info = _files(tmp_path)
    for training in (True, False):
        common = dict(training=training, with_paths=True, native=True, seed=3)
        tf_route = _pixels(make_dataset(paths, [0] * len(paths), SIZE, 4, DecodeFailures(), info=info, **common))
        pillow = _pixels(make_dataset(paths, [0] * len(paths), SIZE, 4, DecodeFailures(), **common))
        assert set(tf_route) == set(paths)
        for p in paths:  # within one level of rounding (area interpolation), as the resizing routes
            assert np.abs(tf_route[p] - pillow[p]).max() <= 1, p
    ds = make_dataset(paths, [0] * len(paths), SIZE, 8, DecodeFailures(), training=True, with_paths=True,
                      native=True, info=info, seed=3)
    first, second = _pixels(ds), _pixels(ds)
    big = paths[0]
    assert not np.array_equal(first[big], second[big])  # a new crop each epoch
    # an evaluation stream's crop is the centre of the picture at its own resolution
    centre = _pixels(make_dataset([big], [0], SIZE, 1, DecodeFailures(), with_paths=True, native=True, info=info))[big]
    full = decode.read_image(big)
    top, left = views.crop_offset(0.5, 150, SIZE), views.crop_offset(0.5, 200, SIZE)
    assert np.array_equal(centre, full[top:top + SIZE, left:left + SIZE])
    # pictures not larger than the input are resized exactly as for any model (a set of only those: the same stream)
    assert larger_than_input(paths, info, SIZE) and not larger_than_input([paths[5], paths[7]], info, SIZE)
    plain = _pixels(make_dataset(paths, [0] * len(paths), SIZE, 4, DecodeFailures(), with_paths=True, info=info))
    for p in (paths[5], paths[7]):
        assert np.array_equal(centre if p == big else _pixels(make_dataset(
            [p], [0], SIZE, 1, DecodeFailures(), with_paths=True, native=True, info=info))[p], plain[p])


# ----------------------------------------------------------------------------- one probability everywhere
@pytest.fixture(scope="module")
def native_model(tmp_path_factory, tiny_data):
    """A tiny srm trained one epoch on crops of the 64 px tiny set at 32 px: (model folder, run id, store)."""
    from dfk.config import TrainConfig
    from dfk.training.trainer import train

    d = tmp_path_factory.mktemp("native")
    uri = f"sqlite:///{d}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        cfg = TrainConfig.from_overrides(dict(arch="srm", data_dir=str(tiny_data), image_size=SIZE, batch_size=8,
                                              epochs=1, weights="none", gradcam_images=2))
        result = train(cfg, experiment="native")
        folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/model", dst_path=str(d / "model")))
    finally:
        mlflow.set_tracking_uri(previous)
    return folder, result, uri


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("picture") / "photo_200x150.png"
    p.write_bytes(_encoded(_photo(200, 150, 7)))
    return p


def _app_url(detector, folder):
    """The app around ``detector`` on a free port, served by uvicorn in a thread: (url, server)."""
    import uvicorn

    from dfk.app.server import create_app, describe_model

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(detector, describe_model(str(folder), detector))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def test_a_native_model_gives_one_probability_through_every_entry_point(native_model, picture, tmp_path):
    import time

    from bench.localserver import MODELS_SERVE_ANY_PORT, request, running, venv_tool
    from dfk.cli import app as cli
    from dfk.data.pipeline import scoring_dataset
    from dfk.evaluation.scoring import score_folder
    from dfk.explain.gradcam import explain_files
    from dfk.models.any_size import any_size_model
    from dfk.serving.detector import load_detector
    from dfk.training.trainer import predict_split

    folder, result, _ = native_model
    data = picture.read_bytes()
    meta = json.loads(next(folder.rglob("*.meta.json")).read_text())
    assert meta["native_resolution"] is True  # the logged model records how it scores

    pyfunc = mlflow.pyfunc.load_model(str(folder))
    p_pyfunc = float(pyfunc.predict(pd.DataFrame({"image": [data]})).probability_fake[0])
    got = {}

    detector = load_detector(str(folder))
    assert detector.native
    # the whole picture went through the model: a 32 px resize of it scores otherwise
    resized = float(detector.score(decode_image(data, SIZE)[None])[0])
    assert abs(resized - p_pyfunc) > 1e-6

    out = tmp_path / "predictions.csv"
    r = CliRunner().invoke(cli, ["predict", str(folder), str(picture), "-o", str(out)])
    assert r.exit_code == 0, r.output
    got["dfk predict"] = float(pd.read_csv(out).probability_fake[0])

    class Index:  # the evaluation path over a folder holding the picture
        root = str(tmp_path)

        def paths(self, split):
            return [str(picture)]

        def labels(self, split):
            return [1]

    got["evaluation"] = float(score_folder(detector, Index()).clean.y_prob[0])

    # the training run's own test scores: the same stream and model its metrics came from
    ys, ps, _ = predict_split(any_size_model(detector.model),
                              scoring_dataset([str(picture)], [1], SIZE, DecodeFailures()))
    got["training run"] = float(detector.calibrated(ps)[0])

    explained = []
    explain_files(detector, [picture], tmp_path / "cam", on_written=lambda f, p, v, o: explained.append((p, o)))
    got["grad-cam"] = explained[0][0]
    assert Image.open(explained[0][1]).size == (200, 150)  # the heatmap of the picture as scored

    url, server, thread = _app_url(detector, folder)
    try:
        for _ in range(100):
            try:
                if request(f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        status, answer = request(f"{url}/api/predict", data, "application/octet-stream")
        assert status == 200, answer
        got["app"] = answer["probability_fake"]
    finally:
        server.should_exit = True
        thread.join(10)

    cmd = [venv_tool("mlflow"), "models", "serve", "-m", str(folder), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", "0", "-w", "1"]
    with running(cmd, "/ping", env=dict(os.environ, **MODELS_SERVE_ANY_PORT), cwd=tmp_path, timeout=120) as proc:
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()]]}}
        status, answer = request(f"{proc.url}/invocations", json.dumps(body).encode())
        assert status == 200, answer
        got["mlflow models serve"] = answer["predictions"][0]["probability_fake"]

    for where, p in got.items():
        assert abs(p - p_pyfunc) <= 1e-5, (where, p, p_pyfunc)


def test_the_run_scores_its_test_split_as_evaluate_does(native_model, tiny_data):
    from dfk.data.scan import DataSpec
    from dfk.evaluation.scoring import score_folder
    from dfk.serving.detector import load_detector

    folder, result, _ = native_model
    index = DataSpec.of(str(tiny_data)).open()
    clean = score_folder(load_detector(str(folder)), index).clean
    for name in ("roc_auc", "accuracy", "log_loss"):
        assert abs(clean.metrics[name] - result.metrics[f"test_{name}"]) <= 1e-5, name


def test_a_resizing_model_is_scored_as_before(trained_model, picture):
    from dfk.serving.detector import load_detector

    detector = load_detector(str(trained_model))
    assert not detector.native
    data = picture.read_bytes()
    expected = detector.calibrated(np.asarray(detector.model(decode_image(data, detector.image_size)[None].astype(np.float32))))
    pyfunc = mlflow.pyfunc.load_model(str(trained_model))
    assert float(pyfunc.predict(pd.DataFrame({"image": [data]})).probability_fake[0]) == pytest.approx(float(expected[0]), abs=1e-6)


def test_a_forensic_model_that_saw_only_pictures_of_its_input_size_is_served_resizing(tiny_data):
    """The built-in set's 64 px pictures at 64 px: nothing was cropped, so a larger picture is resized
    for the model as before, not scored whole (its max pooling over a larger map would call it fake)."""
    from dfk.config import TrainConfig
    from dfk.serving.detector import load_detector
    from dfk.training.trainer import train

    cfg = TrainConfig.from_overrides(dict(arch="srm", data_dir=str(tiny_data), image_size=64, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0))
    result = train(cfg, experiment="whole-pictures")
    assert load_detector(f"runs:/{result.run_id}/model").native is False
