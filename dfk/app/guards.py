"""What the app accepts: upload limits, the Host names it answers to, and same-origin POSTs."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse


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
    # Videos: a larger body than a photo (a minute of 720p), one decoded at a time (another is answered
    # 429 meanwhile; photos keep flowing), at most this many frames sampled, and this many seconds of decoding.
    max_video_bytes: int = 64 * 1024 * 1024
    max_video_frames: int = 32
    video_seconds: float = 60.0


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
