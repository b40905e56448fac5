"""The app's answer to one upload: bytes in, the verdict and a Grad-CAM overlay out (a photo, each face of a
face model, or a video's timeline and most suspicious frames), with the same decode and probability as the
served model. One lock serialises model calls; the routes that call it are :mod:`dfk.app.server`."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import numpy as np

from dfk.app.guards import Limits

#: Longest side of the overlay sent back to the page: sharp on a phone, small to transfer.
DISPLAY_SIDE = 512


class Explainer:
    """Bytes in, verdict and Grad-CAM overlay out: the same decode and probability as the served model."""

    def __init__(self, detector, layer: str | None = None) -> None:
        from dfk.explain.gradcam import detector_gradient_function

        self.detector = detector
        self.fn = detector_gradient_function(detector, layer)
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> dict:
        import cv2

        from dfk.data.decode import decode_for_display
        from dfk.data.views import decode_views
        from dfk.explain.gallery import overlay
        from dfk.explain.gradcam import gradcam_views
        from dfk.metrics.binary import verdict

        d = self.detector
        if d.faces is not None:
            from dfk.data.faces import load_for_faces

            return self.faces(load_for_faces(data))
        views = decode_views(data, d.image_size, getattr(d, "native", False))  # exactly what `mlflow models serve` scores
        shown = decode_for_display(data, DISPLAY_SIDE)
        start = time.perf_counter()
        with self.lock:
            heat, raw = gradcam_views(views, self.fn)
        model_ms = (time.perf_counter() - start) * 1000
        prob = float(d.calibrated(np.array([raw], np.float32))[0])
        h, w = shown.shape[:2]
        # The model saw the whole image (squeezed to a square, or at its own aspect), so stretching the map back fits it.
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
        return {
            "probability_fake": prob,
            "label": verdict(prob, d.threshold),
            "threshold": d.threshold,
            "overlay": _png(overlay(shown, heat)),
            "width": w,
            "height": h,
            "model_ms": round(model_ms, 1),
        }

    def faces(self, picture: np.ndarray, start: float | None = None) -> dict:
        """A face model's answer for a decoded picture: each face's verdict and Grad-CAM on its crop, the
        picture's (its most fake face; ``no_face`` when none), and the picture with the boxes drawn."""
        from dfk.explain.gradcam import explain_faces

        start = time.perf_counter() if start is None else start
        with self.lock:
            found = explain_faces(self.detector, picture, self.fn)
        faces = [{**f["box"].to_dict(), "probability_fake": f["probability_fake"], "label": f["label"],
                  "overlay": _png(f["overlay"])} for f in found]
        top = max(faces, key=lambda f: f["probability_fake"]) if faces else None
        shown, s = _boxes(picture, faces)
        return {"probability_fake": top["probability_fake"] if top else None,
                "label": top["label"] if top else "no_face", "threshold": self.detector.threshold,
                "faces": faces, "overlay": _png(shown), "width": shown.shape[1], "height": shown.shape[0],
                "model_ms": round((time.perf_counter() - start) * 1000, 1),
                **({} if faces else {"message": "no face found: a model trained on face crops scores faces only"})}

    def video(self, data: bytes, limits: Limits) -> dict:
        """A video's verdict (its frames' mean), its timeline as data and as a plot, and its most suspicious
        frames with Grad-CAM. Frames are decoded here (a worker thread) within ``limits``; model calls take
        the lock batch by batch, so photos sent meanwhile are answered between them."""
        import tempfile

        from dfk.data.faces import shrink
        from dfk.data.video import Sampling, VideoLimits, sample_frames
        from dfk.evaluation.media import plot_timeline, score_video

        bounds = VideoLimits(max_samples=limits.max_video_frames, seconds=limits.video_seconds)
        start = time.perf_counter()
        v = score_video(_Locked(self.detector, self.lock), data, Sampling(count=limits.max_video_frames), bounds)
        out = {"kind": "video", **v.to_dict(), "path": ""}
        with tempfile.TemporaryDirectory() as tmp:
            out["timeline_png"] = "data:image/png;base64," + base64.b64encode(
                plot_timeline(v, Path(tmp) / "timeline.png").read_bytes()).decode()
        top = v.most_suspicious(3)
        frames = {f.index: f for f in sample_frames(data, limits=bounds, indices=[f.index for f in top])[1]} if top else {}
        out["suspicious"] = []
        for fs in top:
            frame = frames.get(fs.index)
            if frame is None:
                continue
            if self.detector.faces is not None:
                shown = self.faces(shrink(frame.image), start)
            else:
                shown = self.frame(frame.image)
            out["suspicious"].append({"index": fs.index, "time_s": round(fs.time_s, 3), **shown})
        out["model_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return out

    def frame(self, image: np.ndarray) -> dict:
        """A whole-image model's Grad-CAM of one video frame, as for a photo."""
        import cv2

        from dfk.data.views import scoring_views
        from dfk.explain.gallery import overlay
        from dfk.explain.gradcam import gradcam_views
        from dfk.metrics.binary import verdict

        d = self.detector
        with self.lock:
            heat, raw = gradcam_views(scoring_views(image, d.image_size, getattr(d, "native", False)), self.fn)
        prob = float(d.calibrated(np.array([raw], np.float32))[0])
        s = min(1.0, DISPLAY_SIDE / max(image.shape[:2]))
        shown = cv2.resize(image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        heat = cv2.resize(heat, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_LINEAR)
        return {"probability_fake": prob, "label": verdict(prob, d.threshold), "overlay": _png(overlay(shown, heat)),
                "width": shown.shape[1], "height": shown.shape[0]}


class _Locked:
    """A detector whose model calls take ``lock``: a video's batches queue with the photos' requests."""

    def __init__(self, detector, lock) -> None:
        self._d, self._lock = detector, lock

    def __getattr__(self, name):
        return getattr(self._d, name)

    def score(self, batch):
        with self._lock:
            return self._d.score(batch)

    def score_views(self, views):
        with self._lock:
            return self._d.score_views(views)


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _boxes(picture: np.ndarray, faces: list[dict]) -> tuple[np.ndarray, float]:
    """``picture`` at most DISPLAY_SIDE a side with each face's box drawn (red: fake, green: real)."""
    import cv2

    s = min(1.0, DISPLAY_SIDE / max(picture.shape[:2]))
    shown = cv2.resize(picture, (max(1, round(picture.shape[1] * s)), max(1, round(picture.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s < 1 else picture.copy()
    for f in faces:
        colour = (165, 14, 14) if f["label"] == "fake" else (20, 108, 46)
        p0 = (int(f["x"] * s), int(f["y"] * s))
        p1 = (int((f["x"] + f["w"]) * s), int((f["y"] + f["h"]) * s))
        cv2.rectangle(shown, p0, p1, colour, max(2, round(3 * max(shown.shape[:2]) / 512)))
        cv2.putText(shown, f"{100 * f['probability_fake']:.0f}%", (p0[0], max(12, p0[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, colour, 2, cv2.LINE_AA)
    return shown, s
