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
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from dfk.app.explainer import Explainer
from dfk.app.guards import LOCAL_HOSTS, Limits, SameOrigin, allowed_hosts  # noqa: F401
from dfk.errors import UserError
from dfk.settings import SETTINGS

log = logging.getLogger("dfk.app")

PAGE = Path(__file__).with_name("page.html")


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
    faces: dict | None = None  # a face model's crop rule: it scores each face, not the whole image


def describe_model(model, detector, ui_url: str | None = None) -> ModelInfo:
    """Registered name, version, aliases and run of ``model`` (a URI, or one resolved:
    :class:`dfk.serving.uri.ModelRef`), as far as the tracking store knows them."""
    import mlflow
    from mlflow import MlflowClient

    from dfk.serving.uri import resolve_model

    info = ModelInfo(uri=str(model), arch=detector.arch, image_size=detector.image_size,
                     threshold=detector.threshold, temperature=detector.temperature,
                     faces=detector.faces.to_dict() if getattr(detector, "faces", None) else None)
    client = MlflowClient()
    try:
        ref = resolve_model(model)
        info.name, info.version, info.alias = ref.name, ref.version, ref.alias
        info.aliases, info.run_id = list(ref.aliases), ref.run_id
    except Exception as exc:  # the model loaded, so a missing description is not fatal
        log.warning("could not describe %s: %s", model, str(exc).splitlines()[0] if str(exc) else exc)
    if info.run_id:
        ui_url = ui_url or (mlflow.get_tracking_uri() if mlflow.get_tracking_uri().startswith("http") else "")
        if ui_url:
            try:
                exp = client.get_run(info.run_id).info.experiment_id
                info.run_url = f"{ui_url.rstrip('/')}/#/experiments/{exp}/runs/{info.run_id}"
            except Exception:
                pass
    return info


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

    async def receive(request: Request, max_bytes: int) -> bytes | JSONResponse:
        """The request's body, or the answer that refuses it (too slow, too large, a form, empty)."""
        body, size = bytearray(), 0
        drain = 4 * max_bytes  # read (and drop) this much of an oversized upload, then hang up
        try:
            async with asyncio.timeout(limits.body_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size <= max_bytes:
                        body += chunk
                    elif size > drain:
                        break
        except TimeoutError:
            return error(408, f"the upload did not arrive within {limits.body_seconds:g} s", close=True)
        # The body of a too-large upload is read and dropped rather than left unread: a client
        # still sending when the server answers sees a broken pipe instead of the message.
        if size > max_bytes:
            return error(413, f"file is larger than the {max_bytes / 2**20:g} MB limit", close=True)
        if request.headers.get("content-type", "").startswith("multipart/"):
            return error(415, "send the file's bytes as the request body (curl --data-binary @photo.jpg), not as a form")
        if not body:
            return error(400, "empty file: nothing to check")
        return bytes(body)

    videos = asyncio.Semaphore(1)  # one video decoded at a time: its frames are the app's largest memory

    @app.post("/api/video")
    async def video(request: Request):
        from dfk.data.video import BadVideo, VideoTooLarge

        body = await receive(request, limits.max_video_bytes)
        if isinstance(body, JSONResponse):
            return body
        if videos.locked() or waiting.locked():
            return error(429, "the app is busy with another video; try again in a moment")
        async with videos, waiting:
            try:
                return await run_in_threadpool(explain.video, body, limits)
            except VideoTooLarge as exc:
                return error(413, f"video too large: {exc}")
            except BadVideo as exc:
                return error(400, f"not a usable video ({exc}); the app reads MP4, MOV, AVI, MKV and WebM")

    @app.post("/api/predict")
    async def predict(request: Request):
        body = await receive(request, limits.max_bytes)
        if isinstance(body, JSONResponse):
            return body
        if waiting.locked():
            return error(429, "the app is busy with other images; try again in a moment")
        async with waiting:
            try:
                return await run_in_threadpool(explain, body)
            except ImageTooLarge as exc:
                return error(413, f"image too large: {exc}")
            except BadImage as exc:
                from dfk.data.video import looks_like_video

                if looks_like_video(body[:16]):
                    return error(400, "this is a video: send it to /api/video (the page does)")
                return error(400, f"not a usable image ({exc}); the app reads JPEG, PNG, WebP, BMP, GIF and TIFF")

    return app


def _bind(host: str, port: int):
    """A socket bound to ``host:port`` (port 0: a free one the system picks), held from before the
    model loads until uvicorn listens on it, so that no other process can take the port meanwhile."""
    import errno
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is free
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{host}:{port} is already in use; choose another port with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


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
    from dfk.serving.uri import resolve_model

    if not 0 <= port < 65536:
        raise UserError(f"port must be between 0 (any free one) and 65535, got {port}")
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    with sock:
        model = resolve_model(model_uri)  # once: the page describes the version it serves
        detector = load_detector(model)
        info = describe_model(model, detector, ui_url)
        app = create_app(detector, info, limits, layer, allowed_hosts(host, extra_hosts))
        label = f"{info.name} v{info.version}" if info.version else model_uri
        _raise_open_file_limit(limits.max_connections + 64)
        print(f"dfk app: {label} ({info.arch}, {info.image_size} px) at http://{host}:{port}  (Ctrl-C stops)",
              flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=limits.max_connections)).run(
            sockets=[sock])
