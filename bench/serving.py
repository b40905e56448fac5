"""Serving overhead: `mlflow models serve` against in-process `pyfunc.predict` on the same input.

Trains a small cnn (128 px) on the built-in set, registers it, serves the champion on a free
127.0.0.1 port, then measures single-image p50/p99 latency, requests/s with 4 concurrent
clients, and batch-of-32 latency, each divided by in-process `pyfunc.predict` on the same bytes.

    .venv/bin/python -m bench.serving          # writes the serving section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dfk.settings import SETTINGS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _time(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    import mlflow
    import pandas as pd

    from bench.report import write_section
    from bench.localserver import free_port, registered_cnn, request, running, venv_tool

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        data = registered_cnn(tmp, 128, 16)
        images = [p.read_bytes() for p in sorted((data / "Test").rglob("*.jpg"))][:32]
        model = mlflow.pyfunc.load_model(SETTINGS.champion_uri)
        one, batch = pd.DataFrame({"image": images[:1]}), pd.DataFrame({"image": images})
        model.predict(batch)
        port = free_port()
        base = f"http://127.0.0.1:{port}/invocations"
        cmd = [venv_tool("mlflow"), "models", "serve", "-m", SETTINGS.champion_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "2"]
        with running(cmd, f"http://127.0.0.1:{port}/ping", env=dict(os.environ, MLFLOW_TRACKING_URI=uri)):
            body1 = json.dumps({"inputs": {"image": [base64.b64encode(images[0]).decode()]}}).encode()
            body32 = json.dumps({"inputs": {"image": [base64.b64encode(b).decode() for b in images]}}).encode()
            for _ in range(5):
                request(base, body1)
                request(base, body32)
            n = 100
            inproc1 = _time(lambda: model.predict(one), n)
            http1 = _time(lambda: request(base, body1), n)
            inproc32 = _time(lambda: model.predict(batch), 10)
            http32 = _time(lambda: request(base, body32), 10)
            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: request(base, body1), range(200)))
            rps = 200 / (time.perf_counter() - t)

    med = statistics.median
    rows = [
        ("single image p50 (ms)", 1000 * med(http1), 1000 * med(inproc1)),
        ("single image p99 (ms)", 1000 * _pct(http1, 0.99), 1000 * _pct(inproc1, 0.99)),
        ("batch of 32 p50 (ms)", 1000 * med(http32), 1000 * med(inproc32)),
        ("single-image requests/s (4 clients; in-process: 1/p50)", rps, 1 / med(inproc1)),
    ]
    lines = ["## Serving (`python -m bench.serving`)", "",
             "`cnn` at 128 px, `mlflow models serve --env-manager local -w 2` on 127.0.0.1, JSON `inputs` with base64 "
             "JPEG bytes, against `pyfunc.predict` in the same process on the same bytes.", "",
             "| measure | server | in-process | server / in-process |", "| --- | --- | --- | --- |"]
    for name, server, local in rows:
        lines.append(f"| {name} | {server:.1f} | {local:.1f} | {server / local:.2f} |")
    for row in rows:
        print(row, flush=True)
    write_section("serving", "\n".join(lines))


if __name__ == "__main__":
    main()
