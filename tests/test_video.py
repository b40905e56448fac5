"""Videos: sampled frames, faces per frame, a verdict and a timeline; preparation split by source video.

Videos are written here with OpenCV (this build writes and reads mp4v in .mp4 and MJPG in .avi) from
the faces that ship in installed packages; "forged" frames have the astronaut's face tinted red, which
the stub model (its p(fake) grows with the red channel) scores higher.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dfk.cli import app as cli
from dfk.data.video import BadVideo, Sampling, VideoLimits, VideoTooLarge, sample_frames
from dfk.settings import SETTINGS
from tests.test_faces import asgi, face_model, jpeg, two_faces, whole_model  # noqa: F401  (fixtures)

FORGED = range(4, 8)  # frames whose face is forged, of 12


def write_video(path: Path, frames, fps: float = 10, fourcc: str | None = None) -> Path:
    import cv2

    fourcc = fourcc or ("MJPG" if path.suffix == ".avi" else "mp4v")
    h, w = frames[0].shape[:2] if len(frames) else (400, 640)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()
    return path


def clip(forged=(), n: int = 12, shift: int = 0) -> list[np.ndarray]:
    """``n`` frames of the two-face scene panning slowly; the frames in ``forged`` with a red astronaut."""
    clean, dirty = two_faces(), two_faces(red=0.6)
    return [np.roll((dirty if i in forged else clean)[0], shift + 2 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {"forged": write_video(d / "forged.avi", clip(FORGED)), "clean": write_video(d / "clean.avi", clip()),
            "forged_mp4": write_video(d / "forged.mp4", clip(FORGED))}


def _detector(model):
    from dfk.serving.detector import load_detector

    return load_detector(str(model))


# ----------------------------------------------------------------------------- sampling
def test_frames_are_spread_evenly_or_taken_at_a_rate(videos):
    info, frames = sample_frames(videos["clean"], Sampling.parse("4"))
    assert (info.frames, info.width, info.height) == (12, 640, 400)
    got = list(frames)
    assert [f.index for f in got] == [0, 4, 7, 11] and got[0].image.shape == (400, 640, 3)
    _, frames = sample_frames(videos["clean"], Sampling.parse("5fps"))  # 10 fps, 1.2 s: every other frame
    assert [f.index for f in frames] == [0, 2, 4, 6, 8, 10]
    _, frames = sample_frames(videos["clean"], Sampling.parse("100"), VideoLimits(max_samples=3))
    assert len(list(frames)) == 3
    for bad in ("0", "-2", "x", "0fps", "100fps"):
        with pytest.raises(Exception, match="frames"):
            Sampling.parse(bad)


# ----------------------------------------------------------------------------- the verdict
@pytest.mark.parametrize("model", ["face_model", "whole_model"])
def test_a_video_with_forged_frames_scores_higher_than_its_clean_twin_and_peaks_on_them(model, videos, request):
    from dfk.evaluation.media import score_video

    d = _detector(request.getfixturevalue(model))
    forged = score_video(d, videos["forged"], Sampling(count=12))
    clean = score_video(d, videos["clean"], Sampling(count=12))
    assert forged.aggregate == "mean" and len(forged.scored) == len(clean.scored) == 12
    assert forged.probability_fake > clean.probability_fake
    assert forged.probability_fake == pytest.approx(np.mean([f.probability_fake for f in forged.scored]))
    peak = max(forged.frames, key=lambda f: f.probability_fake)
    assert peak.index in FORGED and {f.index for f in forged.most_suspicious(4)} == set(FORGED)
    flat = [f.probability_fake for f in clean.scored]
    assert max(flat) - min(flat) < 0.05  # no peak where nothing is forged
    assert score_video(d, videos["forged"], Sampling(count=12), how="max").probability_fake == pytest.approx(peak.probability_fake)
    if model == "face_model":
        assert all(len(f.faces) == 2 for f in forged.frames)  # both faces scored in every frame


def test_a_frame_scores_as_the_same_picture_sent_as_a_photo(face_model, tmp_path):
    """One front-end: a single-frame video's score is the photo's, through the served model."""
    from dfk.evaluation.media import score_video

    frame = two_faces(red=0.3)[0]
    video = write_video(tmp_path / "one.avi", [frame], fourcc="MJPG")
    d = _detector(face_model)
    decoded = next(sample_frames(video)[1]).image  # the frame as the video holds it (MJPG is lossy)
    photo = d.predict(None, pd.DataFrame({"image": [jpeg(decoded, 100)]}))
    v = score_video(d, video, Sampling(count=1))
    assert v.probability_fake == pytest.approx(photo.probability_fake[0], abs=0.02)


def test_predict_scores_a_folder_of_images_and_videos_with_timelines(face_model, videos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(jpeg(two_faces(red=0.5)[0]))
    for name in ("forged", "clean"):
        (folder / f"{name}.avi").write_bytes(videos[name].read_bytes())
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(cli, ["predict", str(face_model), str(folder), "-o", str(out), "--frames", "6"])
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["path", "probability_fake", "label"] and len(rows) == 3
    by = {Path(p).name: v for p, v in zip(rows.path, rows.probability_fake)}
    assert by["forged.avi"] > by["clean.avi"]
    timeline = json.loads((tmp_path / "p_timelines" / "forged.json").read_text())
    assert timeline["aggregate"] == "mean" and timeline["frames_sampled"] == 6 and len(timeline["timeline"]) == 6
    assert (tmp_path / "p_timelines" / "forged.png").stat().st_size > 1000
    details = json.loads((tmp_path / "p.json").read_text())
    assert {d["kind"] for d in details} == {"image", "video"} and len(details[2]["faces"]) == 2


def test_evaluate_a_folder_of_videos_reports_frame_and_video_level_auc(face_model, tmp_path):
    root = tmp_path / "vids"
    for label, forged in (("Fake", FORGED), ("Real", ())):
        (root / label).mkdir(parents=True)
        for k in range(2):
            write_video(root / label / f"v{k}.avi", clip(forged if label == "Real" else range(12), n=6, shift=40 * k))
    r = CliRunner().invoke(cli, ["evaluate", str(face_model), "-d", str(root), "--frames", "3"])
    assert r.exit_code == 0, r.output
    assert "video level: ROC-AUC" in r.output and "frame level: ROC-AUC" in r.output
    run = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name(SETTINGS.eval_experiment).experiment_id])[0]
    m = run.data.metrics
    assert m["test_roc_auc"] == 1.0 and 0.5 < m["test_frame_roc_auc"] <= 1.0 and m["videos_scored"] == 4
    assert m["frames_scored"] == 12 and run.inputs.dataset_inputs  # the videos, as the run's dataset input
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "timelines")}
    assert len(arts) == 8  # a JSON and a PNG per video


# ----------------------------------------------------------------------------- bad videos
def _bad(tmp_path, videos) -> dict[str, bytes]:
    good = videos["forged_mp4"].read_bytes()
    zero = write_video(tmp_path / "zero.mp4", []).read_bytes()
    return {"corrupt": good[:8] + b"\x00garbage" * 500, "truncated": good[: len(good) // 3], "zero": zero,
            "not a video": b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x00" * 64}


def test_bad_videos_are_one_clear_message_each(videos, tmp_path):
    for name, data in _bad(tmp_path, videos).items():
        with pytest.raises(BadVideo) as err:
            list(sample_frames(data)[1])
        message = str(err.value)
        assert "\n" not in message and len(message) < 160, (name, message)
        assert any(w in message for w in ("corrupt", "no frame", "not a video", "cannot open")), (name, message)
    with pytest.raises(VideoTooLarge, match="exceed"):
        sample_frames(videos["clean"], limits=VideoLimits(max_pixels=640 * 399))


def test_predict_skips_bad_videos_with_a_line_each(whole_model, videos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in _bad(tmp_path, videos).items():
        (folder / f"{name.replace(' ', '_')}.mp4").write_bytes(data)
    (folder / "good.avi").write_bytes(videos["clean"].read_bytes())
    r = CliRunner().invoke(cli, ["predict", str(whole_model), str(folder), "-o", str(tmp_path / "p.csv"), "--frames", "3"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 1 and "skipped 4 unreadable" in r.output
    assert "Traceback" not in r.output


def test_the_app_shows_a_videos_timeline_and_its_most_suspicious_frames_and_survives_bad_ones(face_model, videos, tmp_path):
    from dfk.app.server import Limits, ModelInfo, create_app

    d = _detector(face_model)
    info = ModelInfo(uri="stub", arch="stub", image_size=64, threshold=0.5, temperature=1.0)
    app = create_app(d, info, Limits(max_video_bytes=2 * 2**20, max_video_frames=12))
    octet = {"content-type": "application/octet-stream"}
    status, body = asgi(app, "POST", "/api/video", videos["forged"].read_bytes(), octet)
    assert status == 200, body
    assert body["kind"] == "video" and body["label"] in ("fake", "real") and len(body["timeline"]) == 12
    assert body["timeline_png"].startswith("data:image/png;base64,")
    top = body["suspicious"]
    assert len(top) == 3 and all(s["index"] in FORGED for s in top)
    assert all(f["overlay"].startswith("data:image/png") for s in top for f in s["faces"])
    for name, data in _bad(tmp_path, videos).items():
        status, answer = asgi(app, "POST", "/api/video", data, octet)
        assert status == 400 and "video" in answer["error"], (name, answer)
    status, answer = asgi(app, "POST", "/api/video", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * (3 * 2**20), octet)
    assert status == 413 and "MB limit" in answer["error"]
    status, answer = asgi(app, "POST", "/api/predict", videos["forged_mp4"].read_bytes(), octet)
    assert status == 400 and "/api/video" in answer["error"]
    assert asgi(app, "GET", "/healthz") == (200, {"status": "ok"})  # still serving


# ----------------------------------------------------------------------------- preparation
def test_prepare_cuts_faces_split_by_source_video_and_logs_a_run(tmp_path):
    """FaceForensics++'s layout: a fake made from original 000 lands in 000's split, every frame of a video in one."""
    src = tmp_path / "ffpp"
    real = src / "original_sequences" / "youtube" / "c23" / "videos"
    fake = src / "manipulated_sequences" / "Deepfakes" / "c23" / "videos"
    real.mkdir(parents=True), fake.mkdir(parents=True)
    for k in range(4):
        write_video(real / f"00{k}.mp4", clip(n=4, shift=30 * k))
        write_video(fake / f"00{k}_00{(k + 1) % 4}.mp4", clip(range(4), n=4, shift=30 * k))
    (fake / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    out = tmp_path / "crops"
    args = ["data", "prepare", str(src), str(out), "--frames", "3", "--size", "64", "--val-split", "0.3"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "faces.json").read_text())
    rep = manifest["report"]
    assert rep["layout"] == "faceforensics" and rep["videos_read"] == 8 and rep["frames_sampled"] == 24
    assert rep["frames_with_face"] == 24 and rep["faces_written"] == 24 and rep["sources"] == 5  # 4 pairs, broken.mp4
    assert [f["path"] for f in rep["failed"]] == [str(fake / "broken.mp4")]
    split_of = rep["split_of"]
    for f in rep["files"]:  # every crop of a file sits in its source's split, and a fake with its original
        stem = Path(f["path"]).stem
        if stem == "broken":
            continue
        assert f["split"] == split_of[f"ffpp:{stem[:3]}"]
        crops = list(out.rglob(f"{stem}_{'[0-9a-f]' * 8}_f*.png"))
        assert len(crops) == 3 and {c.parent.parent.name.lower() for c in crops} == {f["split"]}
    assert manifest["crop_rule"]["size"] == 64 and manifest["crop_rule"]["detector"] == "mtcnn"
    exp = mlflow.get_experiment_by_name(SETTINGS.experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], "tags.`dfk.step` = 'faces'")
    assert len(runs) == 1 and runs[0].inputs.dataset_inputs and runs[0].data.metrics["faces_written"] == 24
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "(reused)" in again.output


def test_a_model_trained_on_prepared_crops_records_their_rule(tmp_path):
    from dfk.data.faces import MANIFEST, CropRule, folder_rule

    (tmp_path / MANIFEST).write_text(json.dumps({"crop_rule": CropRule(margin=0.3, size=128).to_dict()}))
    assert folder_rule(tmp_path) == CropRule(margin=0.3, size=128)
    assert folder_rule(tmp_path / "elsewhere") == CropRule()


# ----------------------------------------------------------------------------- the page, in a browser
@pytest.mark.slow  # starts the app and a browser: ~40 s on 2 cores
def test_the_page_takes_a_video_and_shows_its_timeline_and_suspicious_frames(face_model, videos, tmp_path_factory):
    """The real `dfk app` on a face model, driven by headless Chromium: a video chosen in the page."""
    import os

    from bench.localserver import running, venv_tool
    from tests.browser import chromium, require_browser

    require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cmd = [venv_tool("dfk"), "app", str(face_model), "--port", "0"]
    with running(cmd, "/healthz", env=dict(os.environ), cwd=tmp_path_factory.mktemp("app"), timeout=120) as proc, \
            chromium() as page:
        page.get(proc.url)
        WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))
        assert "each face" in page.find_element(By.ID, "model-info").text
        page.find_element(By.ID, "files").send_keys(str(videos["forged"]))
        WebDriverWait(page, 90).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked 1 of 1"))
        card = page.find_element(By.CSS_SELECTOR, "li.result")
        assert "uploaded video" in card.text and not card.get_attribute("data-error")
        assert card.get_attribute("data-label") in ("fake", "real") and card.get_attribute("data-frames") == "12"
        assert card.find_element(By.CSS_SELECTOR, ".timeline img").get_attribute("src").startswith("data:image/png")
        captions = [c.text for c in card.find_elements(By.CSS_SELECTOR, ".frames figcaption")]
        assert sum(c.startswith("frame ") and "face" not in c for c in captions) == 3  # the three most suspicious
        if os.environ.get("DFK_SCREENSHOT"):
            page.save_screenshot(os.environ["DFK_SCREENSHOT"])
