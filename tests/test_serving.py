"""`mlflow models serve` on the champion: real server, real HTTP, every request format and bad input."""

import base64
import io
import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.hostile import ACCEPTED, corpus
from bench.localserver import MODELS_SERVE_ANY_PORT, request as _post, reset_peaks, running, tree_peak_mib, venv_tool
from dfk.data.decode import DECODE_MEMORY


@pytest.fixture(scope="module")
def server(tmp_path_factory, champion):
    """``mlflow models serve`` of models:/deepfake-detector@champion on a port it chose (port 0)."""
    cmd = [venv_tool("mlflow"), "models", "serve", "-m", "models:/deepfake-detector@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", "0", "-w", "2"]
    with running(cmd, "/ping", env=dict(os.environ, MLFLOW_TRACKING_URI=champion, **MODELS_SERVE_ANY_PORT),
                 cwd=tmp_path_factory.mktemp("serve"), timeout=120) as proc:
        mlflow.set_tracking_uri(champion)
        model = mlflow.pyfunc.load_model("models:/deepfake-detector@champion")
        yield proc.url, model, champion, proc


def _jpegs(tiny_data, n=3):
    return [p.read_bytes() for p in sorted((tiny_data / "Test" / "Fake").glob("*.jpg"))[:n]]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_every_request_format_matches_in_process_predictions(server, tiny_data):
    base, model, *_ = server
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
    base, model, *_ = server
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
        (json.dumps({"inputs": {"image": [_b64(_bomb())]}}).encode(), "row 0: 64,000,000 pixels exceeds the 50 Mpx limit"),
    ],
    ids=["not-json", "wrong-column", "missing-column", "bad-base64", "not-an-image", "empty", "bomb"],
)
def test_bad_input_is_a_400_naming_the_problem_and_the_server_keeps_serving(server, tiny_data, body, fragment):
    base, *_ = server
    status, out = _post(f"{base}/invocations", body)
    assert status == 400, out
    assert fragment in out.get("message", ""), out
    ok, _ = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [_b64(_jpegs(tiny_data, 1)[0])]}}).encode())
    assert ok == 200


def test_the_row_at_fault_is_named(server, tiny_data):
    base, *_ = server
    good = _b64(_jpegs(tiny_data, 1)[0])
    status, out = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [good, good, _b64(b"nope")]}}).encode())
    assert status == 400 and "row 2" in out["message"]


def test_eight_concurrent_clients_get_no_errors(server, tiny_data):
    base, *_ = server
    body = json.dumps({"inputs": {"image": [_b64(_jpegs(tiny_data, 1)[0])]}}).encode()

    def client(_):
        return [_post(f"{base}/invocations", body)[0] for _ in range(25)]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(client, range(8)) for c in batch]
    assert len(codes) == 200 and set(codes) == {200}
    with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
        assert r.status == 200


def test_the_champion_ships_as_a_container_recipe_built_offline(champion, tmp_path):
    """``mlflow models generate-dockerfile``: the Dockerfile ``mlflow models build-docker`` builds,
    with the champion's files, dfk's code and pinned requirements beside it (no network needed)."""
    import subprocess
    import yaml

    from dfk.settings import SETTINGS

    out = tmp_path / "image"
    r = subprocess.run([venv_tool("mlflow"), "models", "generate-dockerfile", "-m", SETTINGS.champion_uri, "-d", str(out)],
                       env=dict(os.environ, MLFLOW_TRACKING_URI=champion), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile and f"mlflow=={mlflow.__version__}" in dockerfile
    assert "_serve(" in dockerfile  # the image's entry point is MLflow's scoring server
    model = out / "model_dir"
    meta = yaml.safe_load((model / "registered_model_meta").read_text())
    assert meta["model_name"] == SETTINGS.model_name
    assert (model / "code" / "dfk" / "serving" / "detector.py").is_file() and (model / "artifacts" / "model.keras").is_file()
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["code"] == "code"
    requirements = (model / "requirements.txt").read_text().split()
    assert any(req.startswith(("tensorflow-cpu==", "tensorflow==")) for req in requirements)
    assert any(req.startswith("keras==") for req in requirements)


#: What the hostile corpus may add to the server's peak memory (all its processes together): each
#: worker decodes within DECODE_MEMORY, which costs at most ~5x in working copies (bench.hostile).
SERVER_GROWTH_MIB = 2 * 5 * DECODE_MEMORY / 2**20


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_the_hostile_corpus_gets_200_or_400_and_the_server_stays_within_its_memory_budget(server, tiny_data, clients):
    base, _, _, proc = server
    before = reset_peaks(proc.pid)  # what earlier tests' requests made the shared server hold is not counted
    files = corpus()

    def send(name):
        return name, *_post(f"{base}/invocations", json.dumps({"inputs": {"image": [_b64(files[name])]}}).encode())

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(send, sorted(files)))
    for name, status, out in answers:
        if name in ACCEPTED:
            assert status == 200 and 0 <= out["predictions"][0]["probability_fake"] <= 1, (name, out)
        else:
            assert status == 400 and "row 0: " in out["message"], (name, out)
    assert tree_peak_mib(proc.pid) - before < SERVER_GROWTH_MIB
    ok, _ = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [_b64(_jpegs(tiny_data, 1)[0])]}}).encode())
    assert ok == 200


def test_more_rows_than_the_limit_is_a_400_before_any_is_decoded(server):
    from dfk.settings import SETTINGS

    base, *_ = server
    tiny = _b64(corpus()["one_pixel"])
    n = SETTINGS.max_request_rows + 1
    status, out = _post(f"{base}/invocations", json.dumps({"inputs": {"image": [tiny] * n}}).encode())
    assert status == 400 and f"{n} images in one request" in out["message"]


class _Payload:
    """Runs a shell command when unpickled: what a poisoned cloudpickled model would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_model_is_refused_before_its_payload_runs(tmp_path, jpeg_bytes):
    import mlflow.pyfunc
    from typer.testing import CliRunner

    from dfk.cli import app

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    import cloudpickle

    marker = tmp_path / "pwned"
    mlflow.pyfunc.save_model(str(tmp_path / "pickled"), python_model=Pickled())
    (pkl,) = (tmp_path / "pickled").glob("*.pkl")  # the model MLflow cloudpickled, poisoned
    pkl.write_bytes(cloudpickle.dumps(_Payload(marker)))
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes)
    out = CliRunner().invoke(app, ["predict", str(tmp_path / "pickled"), str(tmp_path / "x.jpg")])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfk: error: cannot load model") and "pickle" in lines[0]
    assert not marker.exists()  # the payload never ran
    import os

    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in os.environ  # this process's setting is left as it was
