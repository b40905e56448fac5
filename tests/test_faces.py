"""Faces: found and cut by one rule, and scored the same through every entry point.

The faces are those that ship inside installed packages (scikit-image's astronaut, matplotlib's Grace
Hopper); the model is a stub whose output is a known function of the pixels (the mean of the red
channel), saved as a real Keras file and logged through the real pyfunc, so every entry point runs
its own decode, detection, crop and scoring code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from dfk.cli import app as cli
from dfk.data.faces import Box, CropRule, crop, crop_window, detect_faces, face_crops, load_for_faces

IMAGE_SIZE = 64


# ----------------------------------------------------------------------------- material
def jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def two_faces(red: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 640x400 frame with Grace Hopper's head left and the astronaut's right (its face tinted ``red``
    toward red: a forged face region). Returns the frame and both face boxes (hopper, astronaut)."""
    from bench.faces import face_sources, paste_head

    (astro, astro_box), (hopper, hopper_box), _ = face_sources()
    frame = np.full((400, 640, 3), (90, 110, 100), np.uint8)
    left = paste_head(frame, hopper, hopper_box, 120, (60, 40), False, 1.0)
    right = paste_head(frame, astro, astro_box, 120, (60, 360), False, 1.0)
    if red:
        x, y, w, h = right
        region = frame[y:y + h, x:x + w].astype(np.float32)
        region[..., 0] = region[..., 0] + red * (255 - region[..., 0])
        frame[y:y + h, x:x + w] = region.astype(np.uint8)
    return frame, [left, right]


def stub_keras(path: Path, size: int = IMAGE_SIZE) -> Path:
    """A Keras model whose p(fake) is sigmoid(8 x mean red / 255 - 4): redder input, higher score.

    A 1x1 identity convolution gives Grad-CAM a map to explain; the last layer is the Dense that
    Grad-CAM takes its logit from, as in every registry model."""
    import keras

    inp = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    dense = keras.layers.Dense(1, activation="sigmoid", name="head")
    model = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(conv(inp))))
    conv.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    dense.set_weights([np.array([[8 / 255], [0], [0]], "float32"), np.array([-4.0], "float32")])
    model.save(path)
    return path


def stub_p(crops: np.ndarray) -> np.ndarray:
    """What the stub answers for model inputs (N, size, size, 3)."""
    return 1 / (1 + np.exp(-(8 * crops[..., 0].astype(np.float64).mean(axis=(1, 2)) / 255 - 4)))


def log_stub(folder: Path, faces: bool, example: bytes) -> Path:
    """The stub logged through dfk's real pyfunc in a store under ``folder``; the local model folder."""
    import mlflow

    from dfk.serving.detector import log_detector

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    try:
        meta = {"arch": "stub", "image_size": IMAGE_SIZE, "threshold": 0.5, "temperature": 1.0, "batch_size": 8}
        if faces:
            meta["faces"] = CropRule().to_dict()
        mlflow.set_experiment("stub")
        with mlflow.start_run() as run:
            log_detector(str(stub_keras(folder / "stub.keras")), meta, example)
        return Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(folder / "model")))
    finally:
        mlflow.set_tracking_uri(previous)


def asgi(app, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """One request to an ASGI app in this process: (status, JSON answer). (Starlette's TestClient needs
    httpx2, which dfk does not install.)"""
    import asyncio

    heads = [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": heads,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]

    async def receive():
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload) if payload else {}


@pytest.fixture(scope="session")
def face_model(tmp_path_factory) -> Path:
    """A stub model trained "on face crops" (its metadata records the default crop rule)."""
    return log_stub(tmp_path_factory.mktemp("face_model"), True, jpeg(astronaut()))


@pytest.fixture(scope="session")
def whole_model(tmp_path_factory) -> Path:
    """The same stub as a whole-image model (no crop rule)."""
    return log_stub(tmp_path_factory.mktemp("whole_model"), False, jpeg(astronaut()))


# ----------------------------------------------------------------------------- the front-end
def test_the_astronauts_face_is_found_where_it_is():
    (box,) = detect_faces(astronaut())
    assert 170 <= box.x <= 195 and 50 <= box.y <= 80 and 70 <= box.w <= 110 and box.score > 0.9


def test_no_face_in_a_picture_without_one():
    import skimage.data

    assert detect_faces(skimage.data.coffee()) == []
    assert detect_faces(np.zeros((10, 10, 3), np.uint8)) == []  # too small to hold one: no error


def test_the_crop_rule_grows_squares_and_stays_inside_the_picture():
    rule = CropRule(margin=0.15, square=True, size=32)
    x0, y0, x1, y1 = crop_window((512, 512, 3), Box(100, 100, 80, 100), rule)
    assert x1 - x0 == y1 - y0 == 130  # the longer side (100) grown by 15% each side
    assert (x0 + x1) / 2 == pytest.approx(140, abs=1) and (y0 + y1) / 2 == pytest.approx(150, abs=1)
    x0, y0, x1, y1 = crop_window((200, 300, 3), Box(0, 0, 60, 60), rule)  # at the corner: shifted inside
    assert (x0, y0) == (0, 0) and x1 - x0 == 78
    x0, y0, x1, y1 = crop_window((100, 300, 3), Box(100, 0, 150, 100), rule)  # larger than the picture's height
    assert y1 - y0 == 100 and x1 - x0 == 100
    assert crop(astronaut(), Box(180, 66, 88, 100), rule).shape == (32, 32, 3)
    loose = CropRule(margin=0.5, square=False, size=40)
    assert crop(astronaut(), Box(180, 66, 80, 100), loose).shape == (40, 36, 3)  # 180x200 region


def test_a_rule_round_trips_through_metadata_and_none_means_whole_images():
    rule = CropRule(margin=0.3, square=False, size=128)
    meta = json.loads(json.dumps(rule.to_dict()))
    assert meta["detector"] == "mtcnn" and CropRule.from_dict(meta) == rule
    assert CropRule.from_dict(None) is None and CropRule.from_dict({}) is None


def test_several_faces_each_get_a_crop_most_confident_first():
    frame, truth = two_faces()
    boxes, crops = face_crops(frame, CropRule(), IMAGE_SIZE)
    assert len(boxes) == 2 and crops.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    for gx, gy, gw, gh in truth:  # each pasted face is one of the boxes
        assert any(gx <= b.x + b.w / 2 <= gx + gw and gy <= b.y + b.h / 2 <= gy + gh for b in boxes)


# ----------------------------------------------------------------------------- every entry point, one cut
def test_a_photo_with_two_faces_gets_a_verdict_per_face_and_the_most_fake_as_its_own(face_model):
    from dfk.serving.detector import load_detector

    frame, truth = two_faces(red=0.6)  # the astronaut's face forged (redder)
    data = jpeg(frame)
    out = load_detector(str(face_model)).predict(None, pd.DataFrame({"image": [data]}))
    faces = json.loads(out.faces[0])
    assert out.face_count[0] == 2 and len(faces) == 2
    forged = max(faces, key=lambda f: f["probability_fake"])
    x, y, w, h = truth[1]
    assert x <= forged["x"] + forged["w"] / 2 <= x + w  # the most fake face is the forged one
    assert out.probability_fake[0] == pytest.approx(forged["probability_fake"]) and out.label[0] == forged["label"]
    assert {"x", "y", "w", "h", "score", "probability_fake", "label"} <= set(faces[0])
    # the probability is the stub's answer on the crop the front-end cut, no other
    boxes, crops = face_crops(load_for_faces(data), CropRule(), IMAGE_SIZE)
    assert sorted(f["probability_fake"] for f in faces) == pytest.approx(sorted(stub_p(crops)), abs=1e-5)


def test_a_photo_with_no_face_is_refused_by_a_face_model_and_scored_whole_by_a_whole_image_model(face_model, whole_model):
    import skimage.data

    from dfk.serving.detector import load_detector

    data = jpeg(skimage.data.coffee())
    out = load_detector(str(face_model)).predict(None, pd.DataFrame({"image": [data]}))
    assert out.label[0] == "no_face" and out.probability_fake[0] is None and out.face_count[0] == 0
    whole = load_detector(str(whole_model)).predict(None, pd.DataFrame({"image": [data]}))
    assert list(whole.columns) == ["probability_fake", "label"]  # a whole-image model's schema, unchanged
    assert 0 < whole.probability_fake[0] < 1


def test_predict_the_served_model_and_the_app_give_one_probability_per_face(face_model, tmp_path, monkeypatch):
    """The same photo through ``dfk predict``, ``mlflow.pyfunc.load_model`` and the app's /api/predict."""
    import mlflow

    from dfk.app.server import ModelInfo, create_app
    from dfk.serving.detector import SAFE_LOADING, load_detector

    frame, _ = two_faces(red=0.4)
    data = jpeg(frame)
    (tmp_path / "photo.jpg").write_bytes(data)

    r = CliRunner().invoke(cli, ["predict", str(face_model), str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    via_cli = pd.read_csv(tmp_path / "p.csv").probability_fake[0]
    cli_faces = json.loads((tmp_path / "p.json").read_text())[0]["faces"]

    for key, value in SAFE_LOADING.items():  # as mlflow models serve should run; undone after the test
        monkeypatch.setenv(key, value)
    served = mlflow.pyfunc.load_model(str(face_model)).predict(pd.DataFrame({"image": [data]}))

    detector = load_detector(str(face_model))
    info = ModelInfo(uri=str(face_model), arch="stub", image_size=IMAGE_SIZE, threshold=0.5, temperature=1.0)
    status, answer = asgi(create_app(detector, info), "POST", "/api/predict", data,
                          {"content-type": "application/octet-stream"})
    assert status == 200, answer

    assert served.probability_fake[0] == pytest.approx(via_cli, abs=1e-6)
    assert answer["probability_fake"] == pytest.approx(via_cli, abs=1e-5)
    assert [f["probability_fake"] for f in answer["faces"]] == pytest.approx(
        [f["probability_fake"] for f in json.loads(served.faces[0])], abs=1e-5)
    assert [(f["x"], f["y"], f["w"], f["h"]) for f in cli_faces] == [(f["x"], f["y"], f["w"], f["h"]) for f in answer["faces"]]
    assert all(f["overlay"].startswith("data:image/png;base64,") for f in answer["faces"])


def test_gradcam_explains_each_face_a_face_model_scores(face_model, tmp_path):
    frame, _ = two_faces(red=0.5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "two.jpg").write_bytes(jpeg(frame))
    r = CliRunner().invoke(cli, ["gradcam", str(face_model), str(tmp_path / "in"), "-o", str(tmp_path / "cam")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "cam").glob("two_face*_gradcam.png"))) == 2 and (tmp_path / "cam" / "gallery.png").exists()


def test_a_face_model_records_its_rule_and_training_on_builtin_with_faces_is_refused():
    from dfk.config import TrainConfig
    from dfk.errors import UserError

    with pytest.raises(UserError, match="face crops"):
        TrainConfig.from_overrides({"faces": "true"})
    assert TrainConfig.from_overrides({"faces": "true", "data_dir": "/some/crops"}).faces is True
    assert TrainConfig().faces is False


def test_training_on_a_folder_of_face_crops_records_its_rule_in_the_model(tiny_data, tmp_path):
    """faces=true: the logged model carries the folder's crop rule, and loads as a face model."""
    import shutil

    from dfk.config import TrainConfig
    from dfk.data.faces import MANIFEST
    from dfk.serving.detector import load_detector
    from dfk.training.trainer import train

    crops = tmp_path / "crops"
    shutil.copytree(tiny_data, crops)
    rule = CropRule(margin=0.2, size=64)
    (crops / MANIFEST).write_text(json.dumps({"crop_rule": rule.to_dict()}))
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(crops), image_size=32, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0, faces="true"))
    result = train(cfg, experiment="faces")
    d = load_detector(result.model_uri)
    assert d.faces == rule
    out = d.predict(None, pd.DataFrame({"image": [jpeg(astronaut())]}))
    assert out.face_count[0] == 1 and 0 <= out.probability_fake[0] <= 1


def test_evaluate_cuts_faces_of_a_folder_of_photos_and_skips_those_without(face_model, tmp_path):
    """dfk evaluate on photos with a face model: each photo scored by its most fake face, faceless ones listed."""
    import skimage.data

    from dfk.evaluation.scoring import evaluate_model

    for split in ("Train", "Validation", "Test"):
        for label, red in (("Fake", 0.7), ("Real", 0.0)):
            (tmp_path / "photos" / split / label).mkdir(parents=True)
            for k in range(2):
                frame = np.roll(two_faces(red=red)[0], 30 * k, axis=1)
                (tmp_path / "photos" / split / label / f"{k}.jpg").write_bytes(jpeg(frame))
    (tmp_path / "photos" / "Test" / "Real" / "coffee.jpg").write_bytes(jpeg(skimage.data.coffee()))
    _, score, _ = evaluate_model(str(face_model), str(tmp_path / "photos"), [("jpeg", 50)])
    assert score.clean.metrics["roc_auc"] == 1.0 and len(score.clean.y_true) == 4
    assert [(Path(p).name, why) for p, why in score.skipped] == [("coffee.jpg", "no face found")]
    assert ("jpeg", 50) in score.robust
