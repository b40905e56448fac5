"""``dfk app``: a small web page that scores uploaded images and shows where the model looked.

FastAPI and uvicorn already come with MLflow 3 (its tracking server and ``mlflow models serve``
run on them), so the app adds no dependency and runs in the same process as the model. The page
is one static HTML file with plain JavaScript: no build step, nothing fetched from the internet.

Each image is one ``POST /api/predict`` whose body is the raw image bytes. The body is read into
memory up to the byte limit and never written to disk; the file name stays in the browser.
One lock serialises model calls (a 2-core CPU gains nothing from running two gradient passes at
once), and a bounded waiting room answers 429 when more requests queue than the page sends.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from dfk.errors import UserError
from dfk.settings import SETTINGS

log = logging.getLogger("dfk.app")

PAGE = Path(__file__).with_name("webapp_page.html")
#: Longest side of the overlay sent back to the page: sharp on a phone, small to transfer.
DISPLAY_SIDE = 512


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024  # a 20 MB upload is far beyond any photo a detector needs
    max_files: int = 12  # images per drop; the page refuses more with a message
    max_waiting: int = 16  # requests queued for the model before the app answers 429


@dataclass
class ModelInfo:
    """What the page shows about the model (and what ``GET /api/model`` returns)."""

    uri: str
    arch: str
    image_size: int
    threshold: float
    temperature: float
    name: str = ""
    version: str = ""
    alias: str = ""
    aliases: list[str] = field(default_factory=list)
    run_id: str = ""
    run_url: str = ""


def describe_model(uri: str, detector, ui_url: str | None = None) -> ModelInfo:
    """Registered name, version, aliases and run of ``uri``, as far as the tracking store knows them."""
    import mlflow
    from mlflow import MlflowClient

    info = ModelInfo(uri=uri, arch=detector.arch, image_size=detector.image_size,
                     threshold=detector.threshold, temperature=detector.temperature)
    client = MlflowClient()
    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):].strip("/")
            if "@" in ref:
                info.name, info.alias = ref.split("@", 1)
                mv = client.get_model_version_by_alias(info.name, info.alias)
            else:
                info.name, _, version = ref.partition("/")
                mv = client.get_model_version(info.name, version)
            info.version, info.run_id, info.aliases = str(mv.version), mv.run_id or "", list(mv.aliases)
        elif uri.startswith("runs:/"):
            info.run_id = uri[len("runs:/"):].split("/", 1)[0]
    except Exception as exc:  # the model loaded, so a missing description is not fatal
        log.warning("could not describe %s: %s", uri, str(exc).splitlines()[0] if str(exc) else exc)
    if info.run_id:
        ui_url = ui_url or (mlflow.get_tracking_uri() if mlflow.get_tracking_uri().startswith("http") else "")
        if ui_url:
            try:
                exp = client.get_run(info.run_id).info.experiment_id
                info.run_url = f"{ui_url.rstrip('/')}/#/experiments/{exp}/runs/{info.run_id}"
            except Exception:
                pass
    return info


class Explainer:
    """Bytes in, verdict and Grad-CAM overlay out: the same decode and probability as the served model."""

    def __init__(self, detector, layer: str | None = None) -> None:
        from dfk.explain import gradient_function

        self.detector = detector
        self.fn = gradient_function(detector.model, layer)
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> dict:
        import cv2

        from dfk.data.decode import decode_for_display, decode_image
        from dfk.evaluation import verdict
        from dfk.explain import gradcam, overlay

        d = self.detector
        x = decode_image(data, d.image_size)  # exactly what `mlflow models serve` feeds the model
        shown = decode_for_display(data, DISPLAY_SIDE)
        start = time.perf_counter()
        with self.lock:
            heat, raw = gradcam(d.model, x[None].astype(np.float32), fn=self.fn)
        model_ms = (time.perf_counter() - start) * 1000
        prob = float(d.calibrated(raw)[0])
        h, w = shown.shape[:2]
        # The model saw the whole image squeezed to a square, so stretching the map back fits it.
        heat = cv2.resize(heat[0], (w, h), interpolation=cv2.INTER_LINEAR)
        png = io.BytesIO()
        from PIL import Image

        Image.fromarray(overlay(shown, heat)).save(png, format="PNG", optimize=False)
        return {
            "probability_fake": prob,
            "label": verdict(prob, d.threshold),
            "threshold": d.threshold,
            "overlay": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
            "width": w,
            "height": h,
            "model_ms": round(model_ms, 1),
        }


def create_app(detector, info: ModelInfo, limits: Limits = Limits(), layer: str | None = None):
    """The FastAPI application around a loaded :class:`dfk.serving.DeepfakeDetector`."""
    from dfk.data.decode import BadImage, ImageTooLarge

    explain = Explainer(detector, layer)
    waiting = asyncio.Semaphore(limits.max_waiting)
    page = PAGE.read_text(encoding="utf-8")
    app = FastAPI(title="dfk", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explainer, app.state.waiting = explain, waiting  # for tests that hold the model busy

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never a stack trace on the page
        log.exception("error while answering %s", request.url.path)
        return error(500, f"the app could not process this request ({type(exc).__name__}); it keeps serving")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/model")
    async def model() -> dict:
        return {**asdict(info), "limits": asdict(limits)}

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/predict")
    async def predict(request: Request):
        mb = limits.max_bytes / 2**20
        body, size = bytearray(), 0
        drain = 4 * limits.max_bytes  # read (and drop) this much of an oversized upload, then hang up
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limits.max_bytes:
                body += chunk
            elif size > drain:
                break
        # The body of a too-large upload is read and dropped rather than left unread: a client
        # still sending when the server answers sees a broken pipe instead of the message.
        if size > limits.max_bytes:
            return error(413, f"file is larger than the {mb:g} MB limit")
        if request.headers.get("content-type", "").startswith("multipart/"):
            return error(415, "send the image bytes as the request body (curl --data-binary @photo.jpg), not as a form")
        if not body:
            return error(400, "empty file: nothing to check")
        if waiting.locked():
            return error(429, "the app is busy with other images; try again in a moment")
        async with waiting:
            try:
                return await run_in_threadpool(explain, bytes(body))
            except ImageTooLarge as exc:
                return error(413, f"image too large: {exc}")
            except BadImage as exc:
                return error(400, f"not a usable image ({exc}); the app reads JPEG, PNG, WebP, BMP, GIF and TIFF")

    return app


def _port_is_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(model_uri: str = SETTINGS.champion_uri, host: str = "127.0.0.1", port: int = SETTINGS.app_port,
          ui_url: str | None = None, limits: Limits = Limits(), layer: str | None = None) -> None:
    """Load the model, then serve the page until Ctrl-C."""
    import uvicorn

    from dfk.serving import load_detector

    if not 0 < port < 65536:
        raise UserError(f"port must be between 1 and 65535, got {port}")
    if not _port_is_free(host, port):
        raise UserError(f"{host}:{port} is already in use; choose another port with --port")
    detector = load_detector(model_uri)
    info = describe_model(model_uri, detector, ui_url)
    app = create_app(detector, info, limits, layer)
    label = f"{info.name} v{info.version}" if info.version else model_uri
    print(f"dfk app: {label} ({info.arch}, {info.image_size} px) at http://{host}:{port}  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
