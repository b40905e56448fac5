"""Normal requests' latency with and without the hostile corpus, the servers' memory, and slow clients.

Trains a tiny cnn (64 px) on the built-in set, registers it, then
  /invocations  `mlflow models serve -w 2`: 200 single-image requests alone, then 200 while 4 clients
                send the whole corpus of bench.hostile in a loop; p50/p99 and the server's peak RSS.
  app           `dfk app`: 1,000 connections trickle a body byte by byte while a normal POST is timed.
And the per-file decode peaks of bench.hostile (fresh process each).

    .venv/bin/python -m bench.hostile_serving      # writes the hostile section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:

    from bench.hostile import corpus, decode_peaks
    from bench.localserver import free_port, registered_cnn, request, running, tree_peak_mib, venv_tool
    from bench.report import write_section
    from dfk.data.decode import DECODE_MEMORY, MAX_DECODED_BYTES
    from dfk.settings import SETTINGS

    peaks = decode_peaks(256)
    files = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        data = registered_cnn(tmp, 64, 8)
        image = sorted((data / "Test").rglob("*.jpg"))[0].read_bytes()
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri)

        port = free_port()
        url = f"http://127.0.0.1:{port}/invocations"
        body = json.dumps({"inputs": {"image": [base64.b64encode(image).decode()]}}).encode()
        bombs = [json.dumps({"inputs": {"image": [base64.b64encode(b).decode()]}}).encode() for b in files.values()]
        cmd = [venv_tool("mlflow"), "models", "serve", "-m", SETTINGS.champion_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "2"]
        with running(cmd, f"http://127.0.0.1:{port}/ping", env=env, cwd=tmp) as proc:
            for _ in range(10):
                request(url, body)
            base_mib = tree_peak_mib(proc.pid)
            alone = []
            for _ in range(200):
                t = time.perf_counter()
                assert request(url, body)[0] == 200
                alone.append(time.perf_counter() - t)
            stop = threading.Event()
            sent = [0]

            def attacker():
                while not stop.is_set():
                    for b in bombs:
                        request(url, b)
                        sent[0] += 1

            threads = [threading.Thread(target=attacker) for _ in range(4)]
            for th in threads:
                th.start()
            time.sleep(1)
            under = []
            for _ in range(200):
                t = time.perf_counter()
                assert request(url, body)[0] == 200
                under.append(time.perf_counter() - t)
            stop.set()
            for th in threads:
                th.join()
            serve_peak = tree_peak_mib(proc.pid)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with running([venv_tool("dfk"), "app", "--port", str(port)], f"{base}/healthz", env=env, cwd=tmp) as proc:
            request(f"{base}/api/predict", image, "application/octet-stream")
            app_base = tree_peak_mib(proc.pid)
            normal = []
            for _ in range(20):
                t = time.perf_counter()
                request(f"{base}/api/predict", image, "application/octet-stream")
                normal.append(time.perf_counter() - t)
            head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                    "Content-Length: 100000\r\n\r\n").encode()
            socks = []
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(head + b"\xff")
                socks.append(s)
            trickled = []
            for _ in range(20):
                for s in socks:
                    s.sendall(b"\xff")
                t = time.perf_counter()
                status, _ = request(f"{base}/api/predict", image, "application/octet-stream")
                assert status == 200
                trickled.append(time.perf_counter() - t)
            for s in socks:
                s.close()
            app_peak = tree_peak_mib(proc.pid)

    ms = lambda xs, q: 1000 * _pct(xs, q)  # noqa: E731
    lines = ["## Hostile images and slow clients (`python -m bench.hostile_serving`)", "",
             f"Decode budget: {MAX_DECODED_BYTES / 2**20:.0f} MiB of decoded pixels per image, "
             f"{DECODE_MEMORY / 2**20:.0f} MiB per process across concurrent decodes. Peak memory of decoding one "
             "file at 256 px in a fresh process (VmHWM above the loaded baseline; before = the decoder without "
             "allowlist or budget, measured with the same script on the previous commit):", "",
             "| file | bytes | before (MiB) | now (MiB) | now |", "| --- | --- | --- | --- | --- |"]
    before = {"webp_bomb": 1593.5, "png_bomb_rgba": 1216.9, "tiff_huge_strip": 658.7, "png16_bomb": 655.8,
              "fits": 4.7, "tga": 4.6}
    for name in ("webp_bomb", "png_bomb_rgba", "tiff_huge_strip", "png16_bomb", "gif_huge_frame", "fits", "tga",
                 "rgba_png_at_budget", "webp_at_budget"):
        mib, sec, outcome = peaks[name]
        was = f"{before[name]:.0f} (decoded)" if name in before else "-"
        lines.append(f"| {name} | {len(files[name]):,} | {was} | {mib:.0f} | {outcome.split(':')[0]} |")
    lines += ["", f"`mlflow models serve -w 2` (cnn, 64 px), single-image requests, 200 each, one client; the corpus "
              f"({len(files)} files) sent by 4 more clients in a loop ({sent[0]} requests) during the second series:", "",
              "| measure | alone | under the corpus |", "| --- | --- | --- |",
              f"| p50 (ms) | {ms(alone, .5):.1f} | {ms(under, .5):.1f} |",
              f"| p99 (ms) | {ms(alone, .99):.1f} | {ms(under, .99):.1f} |",
              f"| server peak RSS, all processes (MiB) | {base_mib:.0f} | {serve_peak:.0f} |", "",
              f"`dfk app` (body deadline 60 s): a normal `POST /api/predict` while 1,000 connections trickle a body "
              f"byte by byte: p50 {ms(trickled, .5):.0f} ms, max {1000 * max(trickled):.0f} ms (alone: p50 "
              f"{ms(normal, .5):.0f} ms, max {1000 * max(normal):.0f} ms); app peak RSS {app_base:.0f} -> {app_peak:.0f} MiB."]
    print("\n".join(lines), flush=True)
    write_section("hostile", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
