"""Start a server on 127.0.0.1 for a test, a benchmark or a screenshot, and talk JSON to it.

One place for "start the process on a port of its own, wait until it answers, stop it however the
block ends", shared by the serving and web-app tests, their benchmarks and the UI screenshots.
A server is best started on port 0: it binds a free port itself and says which in its log
(:data:`ANNOUNCED`), and :func:`running` reads it back. A port picked first and bound later
(:func:`free_port`) may be taken in between by any other process on the machine.
It lives outside the ``dfk`` package, which every logged model copies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

#: How the servers started here say where they listen, with the port they chose when given port 0:
#: uvicorn ("Uvicorn running on http://127.0.0.1:PORT", also under `mlflow models serve` and
#: `mlflow server`), gunicorn ("Listening at: http://127.0.0.1:PORT") and `dfk app` ("... at
#: http://127.0.0.1:PORT").
ANNOUNCED = re.compile(r"(?:Uvicorn running on|Listening at:|^dfk app: .* at) (https?://[\w.-]+|https?://\[[\w:]+\]):(\d+)",
                       re.MULTILINE)

#: The environment that makes `mlflow models serve -p 0` bind port 0: MLflow leaves a port of 0 off
#: the uvicorn command it runs (so uvicorn would take its default, 8000); uvicorn reads its options
#: from UVICORN_* variables.
MODELS_SERVE_ANY_PORT = {"UVICORN_PORT": "0"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for what cannot bind port 0 itself; another process may take it before it is used."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def venv_tool(name: str) -> str:
    """A console script installed beside the running interpreter (mlflow, dfk)."""
    return str(Path(sys.executable).parent / name)


def request(url: str, body: bytes | None = None, content_type: str = "application/json",
            timeout: float = 60) -> tuple[int, dict]:
    """GET (no body) or POST; returns the status and the decoded JSON body, errors included."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return e.code, {"raw": raw.decode(errors="replace")}


def announced_url(log: str) -> str | None:
    """The base URL (``http://host:port``) a server's log says it listens on, if it has said so yet."""
    for m in ANNOUNCED.finditer(log):
        if int(m.group(2)) != 0:
            return f"{m.group(1)}:{m.group(2)}"
    return None


#: Seconds a stopped server has to exit (and end its MLflow run) before it is killed.
STOP_GRACE_S = 60


@contextlib.contextmanager
def running(cmd: Sequence[str], ready: str, env: dict | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``ready`` answers 200; stop it when the block ends, however it ends.

    ``ready``: a path (``/ping``) on the URL the server announces in its log (:data:`ANNOUNCED`),
    for a server started on port 0; or a whole URL. The process comes with ``url``, the server's
    base URL, and ``log()``, what it wrote so far."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # This checkout's dfk first: an environment shared between checkouts may have another one installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    folder = Path(tempfile.mkdtemp(prefix="dfk-server-"))
    path = folder / "log"
    # A file, not a pipe: a chatty server never blocks on a full pipe. Appended to, so that reading
    # it here never moves where the server writes.
    with path.open("ab") as out:
        # A session of its own, so stopping it also stops what it started (`mlflow run` runs the
        # entry point as a child; servers fork workers).
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True)

    def log() -> str:
        return path.read_bytes().decode(errors="replace")

    proc.log = log
    try:
        deadline = time.monotonic() + timeout
        url = None if ready.startswith("/") else ready
        while True:
            if url is None and (base := announced_url(log())) is not None:
                url = base + ready
            if url is not None:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url or 'the server'} did not answer within {timeout:.0f} s: {log()[-3000:]}")
            time.sleep(0.5)
        parts = urllib.parse.urlsplit(url)
        proc.url = f"{parts.scheme}://{parts.netloc}"
        yield proc
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:  # a server ends its runs on SIGTERM; on a loaded machine that can take a while before SIGKILL
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_peak_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and all its descendants, in MiB, summed: since they
    started, or since :func:`reset_peaks`."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def reset_peaks(pid: int) -> float:
    """Start the peaks of a process and its descendants again from what they hold now (Linux >= 4.0:
    ``5`` written to ``/proc/PID/clear_refs``), so that a measurement on a shared server owes nothing
    to what earlier requests made it hold; that total now, in MiB."""
    for p in _tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except FileNotFoundError:
            pass  # gone meanwhile
    return tree_peak_mib(pid)


def registered_cnn(folder: Path, image_size: int, per_class: int) -> Path:
    """A one-epoch cnn on a built-in set of ``per_class`` training images per class at ``image_size``,
    trained into ``folder``'s own store and registered (so it is the champion); the data folder."""
    import mlflow

    from dfk.config import TrainConfig
    from dfk.data.synth import SynthSpec, generate
    from dfk.registry.promotion import register_best
    from dfk.training.trainer import train

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    data = generate(SynthSpec(train=per_class, validation=per_class // 2, test=per_class // 2, image_size=image_size),
                    folder / "d")
    train(TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(data), image_size=image_size, epochs=1,
                                          weights="none", gradcam_images=0)), experiment="bench")
    register_best("bench")
    return data
