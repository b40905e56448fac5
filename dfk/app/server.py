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

PAGE = Path(__file__).with_name("page.html")
#: Longest side of the overlay sent back to the page: sharp on a phone, small to transfer.
DISPLAY_SIDE = 512


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024  # a 20 MB upload is far beyond any photo a detector needs
    max_files: int = 12  # images per drop; the page refuses more with a message
    max_waiting: int = 16  # requests queued for the model before the app answers 429
    # An upload still arriving after this many seconds is answered 408 and its connection closed, so
    # clients that trickle a body byte by byte free their connection (20 MB at 4 Mbit/s takes 40 s).
    body_seconds: float = 60.0
    # Connections uvicorn holds at once (its limit_concurrency; more are answered 503); the process's
    # open-file limit is raised to fit them.
    max_connections: int = 4096


#: Host names a browser may call the app by, whatever address it is bound to (DNS rebinding: a
#: foreign name that resolves to this machine is refused).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, extra=()) -> list[str]:
    """Host names the app answers to when bound to ``host``: it, the local names, ``extra``; bound to
    all interfaces, also this machine's name and addresses."""
    import socket

    names = {*LOCAL_HOSTS, *extra}
    if host in _ANY_ADDRESS:
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name)
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    else:
        names.add(host)
    return sorted(n.lower() for n in names if n)


class SameOrigin:
    """Refuse (403) a POST, PUT, PATCH or DELETE whose ``Origin`` is another site than the ``Host`` asked.

    A browser sends ``Origin`` on cross-site requests, and a form post or a ``text/plain`` fetch
    needs no CORS preflight, so without this another page could make the app work for it.
    Requests without ``Origin`` (curl, scripts) pass. Starlette has no such middleware (its
    CORSMiddleware only shapes the answer, after the app has already run).
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                       if k in (b"origin", b"host")}
            origin = headers.get("origin")
            if origin is not None:
                from urllib.parse import urlsplit

                parts = urlsplit(origin)
                if parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").lower():
                    response = JSONResponse({"error": f"cross-site request from {origin[:100]} refused"}, status_code=403)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


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
        from dfk.explain.gradcam import gradient_function

        self.detector = detector
        self.fn = gradient_function(detector.model, layer)
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> dict:
        import cv2

        from dfk.data.decode import decode_for_display, decode_image
        from dfk.metrics.binary import verdict
        from dfk.explain.gradcam import gradcam, overlay

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


def create_app(detector, info: ModelInfo, limits: Limits = Limits(), layer: str | None = None,
               hosts: list[str] | None = None):
    """The FastAPI application around a loaded :class:`dfk.serving.detector.DeepfakeDetector`.

    ``hosts``: the ``Host`` names it answers (others get 400); None: :func:`allowed_hosts` of 127.0.0.1.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from dfk.data.decode import BadImage, ImageTooLarge

    explain = Explainer(detector, layer)
    waiting = asyncio.Semaphore(limits.max_waiting)
    page = PAGE.read_text(encoding="utf-8")
    app = FastAPI(title="dfk", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explainer, app.state.waiting = explain, waiting  # for tests that hold the model busy
    app.add_middleware(SameOrigin)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts if hosts is not None else allowed_hosts("127.0.0.1"))

    def error(status: int, message: str, close: bool = False) -> JSONResponse:
        # close: the client may still be sending; ask uvicorn to drop the connection after answering.
        return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"} if close else None)

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
        try:
            async with asyncio.timeout(limits.body_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size <= limits.max_bytes:
                        body += chunk
                    elif size > drain:
                        break
        except TimeoutError:
            return error(408, f"the upload did not arrive within {limits.body_seconds:g} s", close=True)
        # The body of a too-large upload is read and dropped rather than left unread: a client
        # still sending when the server answers sees a broken pipe instead of the message.
        if size > limits.max_bytes:
            return error(413, f"file is larger than the {mb:g} MB limit", close=True)
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


def _raise_open_file_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` sockets if the hard limit allows (the soft one is often 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(model_uri: str = SETTINGS.champion_uri, host: str = "127.0.0.1", port: int = SETTINGS.app_port,
          ui_url: str | None = None, limits: Limits = Limits(), layer: str | None = None,
          extra_hosts: tuple[str, ...] = ()) -> None:
    """Load the model, then serve the page until Ctrl-C.

    ``extra_hosts``: more names browsers may use for this machine (``--allowed-host``).
    """
    import uvicorn

    from dfk.serving.detector import load_detector

    if not 0 < port < 65536:
        raise UserError(f"port must be between 1 and 65535, got {port}")
    if not _port_is_free(host, port):
        raise UserError(f"{host}:{port} is already in use; choose another port with --port")
    detector = load_detector(model_uri)
    info = describe_model(model_uri, detector, ui_url)
    app = create_app(detector, info, limits, layer, allowed_hosts(host, extra_hosts))
    label = f"{info.name} v{info.version}" if info.version else model_uri
    _raise_open_file_limit(limits.max_connections + 64)
    print(f"dfk app: {label} ({info.arch}, {info.image_size} px) at http://{host}:{port}  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=limits.max_connections)
