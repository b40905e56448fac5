"""Start a server on 127.0.0.1 for a test, a benchmark or a screenshot, and talk JSON to it.

One place for "pick a free port, start the process, wait until it answers, stop it however the
block ends", shared by the serving and web-app tests, their benchmarks and the UI screenshots.
It lives outside the ``dfk`` package, which every logged model copies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence


def free_port(host: str = "127.0.0.1") -> int:
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


@contextlib.contextmanager
def running(cmd: Sequence[str], ready_url: str, env: dict | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``ready_url`` answers 200; stop it when the block ends, however it ends."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # This checkout's dfk first: an environment shared between checkouts may have another one installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on a full pipe
    # A session of its own, so stopping it also stops what it started (`mlflow run` runs the
    # entry point as a child; servers fork workers).
    proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log.read().decode(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        yield proc
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        log.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tree_peak_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and all its descendants, in MiB, summed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024



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
