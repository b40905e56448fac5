"""`mlflow models serve` on the champion: real server, real HTTP, every request format and bad input."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dfk.config import TrainConfig
from dfk.registry import promote, register_best
from dfk.training import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_data):
    """Train, register, promote, then serve models:/deepfake-detector@champion on a free port."""
    d = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{d}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    cfg = TrainConfig.from_overrides(dict(arch="cnn", data_dir=str(tiny_data), image_size=32, batch_size=8, epochs=1,
                                          weights="none", gradcam_images=0))
    train(cfg, experiment="serve")
    register_best("serve")
    promote(data_dir=tiny_data)
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/deepfake-detector@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=d,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode()[-3000:])
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start")
        model = mlflow.pyfunc.load_model("models:/deepfake-detector@champion")
        yield base, model, uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))


def _jpegs(tiny_data, n=3):
    return [p.read_bytes() for p in sorted((tiny_data / "Test" / "Fake").glob("*.jpg"))[:n]]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_every_request_format_matches_in_process_predictions(server, tiny_data):
    base, model, _ = server
    images = _jpegs(tiny_data)
    expected = model.predict(pd.DataFrame({"image": images})).probability_fake.to_numpy()
    b64 = [_b64(b) for b in images]
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[s] for s in b64]}},
        "dataframe_records": {"dataframe_records": [{"image": s} for s in b64]},
        "instances": {"instances": [{"image": s} for s in b64]},
        "inputs": {"inputs": {"image": b64}},
    }
    for name, body in bodies.items():
        status, out = _post(f"{base}/invocations", json.dumps(body).encode())
        assert status == 200, (name, out)
        got = np.array([row["probability_fake"] for row in out["predictions"]])
        assert np.allclose(got, expected, atol=1e-5), name
        assert all(row["label"] in ("fake", "real") for row in out["predictions"])


def test_other_sizes_and_modes_are_accepted(server):
    base, model, _ = server
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 120), dtype=np.uint8)).save(buf, "PNG")
    status, out = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [_b64(buf.getvalue())]}}).encode())
    assert status == 200 and 0 <= out["predictions"][0]["probability_fake"] <= 1


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"this is not json", "valid JSON"),
        (json.dumps({"dataframe_records": [{"picture": "aGVsbG8="}]}).encode(), "image"),
        (json.dumps({"dataframe_records": [{}]}).encode(), "image"),
        (json.dumps({"dataframe_records": [{"image": "!!! not base64 !!!"}]}).encode(), "base64"),
        (json.dumps({"dataframe_records": [{"image": _b64(b"just some text")}]}).encode(), "row 0: not an image"),
        (json.dumps({"dataframe_records": [{"image": ""}]}).encode(), "row 0: empty"),
        (json.dumps({"inputs": {"image": [_b64(_bomb())]}}).encode(), "row 0: 8000x8000 pixels exceeds"),
    ],
    ids=["not-json", "wrong-column", "missing-column", "bad-base64", "not-an-image", "empty", "bomb"],
)
def test_bad_input_is_a_400_naming_the_problem_and_the_server_keeps_serving(server, tiny_data, body, fragment):
    base, _, _ = server
    status, out = _post(f"{base}/invocations", body)
    assert status == 400, out
    assert fragment in out.get("message", ""), out
    ok, _ = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [_b64(_jpegs(tiny_data, 1)[0])]}}).encode())
    assert ok == 200


def test_the_row_at_fault_is_named(server, tiny_data):
    base, _, _ = server
    good = _b64(_jpegs(tiny_data, 1)[0])
    status, out = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [good, good, _b64(b"nope")]}}).encode())
    assert status == 400 and "row 2" in out["message"]


def test_eight_concurrent_clients_get_no_errors(server, tiny_data):
    base, _, _ = server
    body = json.dumps({"inputs": {"image": [_b64(_jpegs(tiny_data, 1)[0])]}}).encode()

    def client(_):
        return [_post(f"{base}/invocations", body)[0] for _ in range(25)]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(client, range(8)) for c in batch]
    assert len(codes) == 200 and set(codes) == {200}
    with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
        assert r.status == 200
