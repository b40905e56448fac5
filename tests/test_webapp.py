"""`dfk app`: the real app on a port it chose with a tiny champion, over HTTP and in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from dfk.cli import app as cli
from bench.localserver import request, running, venv_tool
from tests.browser import chromium, require_browser

UI = "http://127.0.0.1:5000"
MAX_MB = 1  # small, so the too-large test sends little


@pytest.fixture(scope="module")
def served_process(tmp_path_factory, champion):
    """``dfk app`` on the champion, with run links to an MLflow UI address: (base URL, process).
    Port 0: the app binds a free port itself and says which."""
    cmd = [venv_tool("dfk"), "app", "--port", "0", "--mlflow-ui", UI, "--max-mb", str(MAX_MB),
           "--allowed-host", "detector.example"]
    with running(cmd, "/healthz", env=dict(os.environ, MLFLOW_TRACKING_URI=champion),
                 cwd=tmp_path_factory.mktemp("app"), timeout=120) as proc:
        yield proc.url, proc


@pytest.fixture(scope="module")
def served(served_process):
    return served_process[0]


def _jpeg(tiny_data, kind="Fake", i=0):
    return sorted((tiny_data / "Test" / kind).glob("*.jpg"))[i]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _post(base: str, body: bytes):
    return request(f"{base}/api/predict", body, "application/octet-stream")


def _in_process(champion, data: bytes) -> float:
    mlflow.set_tracking_uri(champion)
    model = mlflow.pyfunc.load_model("models:/deepfake-detector@champion")
    return float(model.predict(pd.DataFrame({"image": [data]})).probability_fake[0])


def _overlay_size(result: dict) -> tuple[int, int]:
    head, b64 = result["overlay"].split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


# ----------------------------------------------------------------------------- HTTP
def test_model_info_names_the_registered_version_and_links_the_run(served, champion):
    status, info = request(f"{served}/api/model")
    assert status == 200
    version = mlflow.MlflowClient(champion).get_model_version_by_alias("deepfake-detector", "champion").version
    assert (info["name"], info["alias"], info["version"], info["arch"]) == ("deepfake-detector", "champion", str(version), "cnn")
    assert "champion" in info["aliases"] and info["image_size"] == 32
    run = mlflow.MlflowClient(champion).get_run(info["run_id"])
    assert info["run_url"] == f"{UI}/#/experiments/{run.info.experiment_id}/runs/{info['run_id']}"
    assert 0 < info["threshold"] < 1 and info["limits"]["max_bytes"] == MAX_MB * 2**20


def test_verdict_is_the_served_probability_with_an_overlay(served, champion, tiny_data):
    data = _jpeg(tiny_data).read_bytes()
    status, r = _post(served, data)
    assert status == 200, r
    assert r["probability_fake"] == pytest.approx(_in_process(champion, data), abs=1e-5)
    assert r["label"] == ("fake" if r["probability_fake"] >= r["threshold"] else "real")
    assert _overlay_size(r) == (64, 64) == (r["width"], r["height"])  # the upload's own size


def test_overlay_keeps_the_aspect_and_is_at_most_512_px(served):
    status, r = _post(served, _png(900, 300))
    assert status == 200, r
    assert _overlay_size(r) == (512, 171)


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, status, fragment", [
    (b"just some text, not a picture", 400, "not a usable image"),
    (b"", 400, "empty file"),
    (b"\xff\xd8\xff\xe0" + bytes(MAX_MB * 2**20), 413, f"larger than the {MAX_MB} MB limit"),
    (bytes(3 * MAX_MB * 2**20), 413, f"larger than the {MAX_MB} MB limit"),
    (_bomb(), 413, "64,000,000 pixels exceeds the 50 Mpx limit"),
], ids=["text", "empty", "just-over-the-byte-limit", "three-times-the-byte-limit", "too-many-pixels"])
def test_bad_uploads_get_a_clear_4xx_and_the_app_keeps_serving(served, tiny_data, body, status, fragment):
    got, r = _post(served, body)
    assert got == status and fragment in r["error"], r
    assert "Traceback" not in r["error"]
    assert _post(served, _jpeg(tiny_data).read_bytes())[0] == 200


def test_a_form_upload_is_told_to_send_the_bytes(served, tiny_data):
    boundary = "dfkboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + _jpeg(tiny_data).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    got, r = request(f"{served}/api/predict", body, f"multipart/form-data; boundary={boundary}")
    assert got == 415 and "--data-binary" in r["error"]


def test_truncated_jpeg_is_a_400(served, tiny_data):
    data = _jpeg(tiny_data).read_bytes()
    got, r = _post(served, data[: len(data) // 3])
    assert got == 400 and "not a usable image" in r["error"], r


def test_a_full_waiting_room_answers_429_and_recovers(champion, tiny_data):
    import socket

    import uvicorn

    from dfk.serving.detector import load_detector
    from dfk.app.server import Limits, create_app, describe_model

    mlflow.set_tracking_uri(champion)
    uri = "models:/deepfake-detector@champion"
    detector = load_detector(uri)
    app = create_app(detector, describe_model(uri, detector), Limits(max_waiting=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and served there: no other process can take the port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    data = _jpeg(tiny_data).read_bytes()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        first: list = []
        with app.state.explainer.lock:  # the model is busy with someone else's image
            worker = threading.Thread(target=lambda: first.append(_post(base, data)))
            worker.start()
            deadline = time.monotonic() + 30
            while not app.state.waiting.locked() and time.monotonic() < deadline:
                time.sleep(0.02)
            status, r = _post(base, data)
            assert status == 429 and "busy" in r["error"]
        worker.join(30)
        assert first and first[0][0] == 200
        assert _post(base, data)[0] == 200
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_cli_errors_are_one_line_and_exit_2(champion, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion)
    r = runner.invoke(cli, ["app", "models:/no-such-model@champion", "--port", "0"])
    assert r.exit_code == 2 and "cannot load model" in r.output and "Traceback" not in r.output
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = runner.invoke(cli, ["app", "--port", str(busy)])
    assert r.exit_code == 2 and "already in use" in r.output


def test_mlflow_run_app_entry_point_serves_the_page(champion, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [venv_tool("mlflow"), "run", root, "-e", "app", "--env-manager", "local",
           "-P", "model_uri=models:/deepfake-detector@champion", "-P", "port=0"]
    with running(cmd, "/healthz", env=dict(os.environ, MLFLOW_TRACKING_URI=champion), cwd=tmp_path,
                 timeout=180) as proc:
        base = proc.url
        status, info = request(f"{base}/api/model")
        assert status == 200 and info["alias"] == "champion"
        proc.terminate()  # mlflow run alone, as `kill PID` stops it; the app it started is another process
        proc.wait(timeout=300)  # hang guards, not speed limits (two test workers share 2 cores)
        deadline = time.monotonic() + 300  # the app stops with it
        while time.monotonic() < deadline and request_ok(f"{base}/healthz"):
            time.sleep(0.5)
        assert not request_ok(f"{base}/healthz")


def request_ok(url: str) -> bool:
    try:
        return request(url, timeout=2)[0] == 200
    except OSError:
        return False


# ----------------------------------------------------------------------------- hostile images, other sites, slow clients
@pytest.mark.parametrize("clients", [1, 4, 16])
def test_the_hostile_corpus_gets_200_or_4xx_and_the_app_stays_within_its_memory_budget(served_process, tiny_data, clients):
    from concurrent.futures import ThreadPoolExecutor

    from bench.hostile import ACCEPTED, corpus
    from bench.localserver import reset_peaks, tree_peak_mib
    from dfk.data.decode import DECODE_MEMORY

    base, proc = served_process
    before, files = reset_peaks(proc.pid), corpus()  # what earlier tests made the shared app hold is not counted
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda name: (name, *_post(base, files[name])), sorted(files)))
    for name, status, r in answers:
        if name in ACCEPTED:
            assert status == 200 and "overlay" in r, (name, r)
        else:
            assert status in (400, 413, 429) and "Traceback" not in r["error"], (name, r)
    # Decodes share DECODE_MEMORY, costing at most ~5x that in working copies (bench.hostile).
    assert tree_peak_mib(proc.pid) - before < 5 * DECODE_MEMORY / 2**20
    assert _post(base, _jpeg(tiny_data).read_bytes())[0] == 200


def _raw(base: str, headers: dict, body: bytes = b"x") -> tuple[int, str]:
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/predict", skip_host=True)
        for k, v in {"Content-Type": "application/octet-stream", "Content-Length": str(len(body)), **headers}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def test_another_sites_post_is_refused_and_same_origin_and_curl_still_work(served, tiny_data):
    port = served.rsplit(":", 1)[1]
    data = _jpeg(tiny_data).read_bytes()
    host = f"127.0.0.1:{port}"
    assert _raw(served, {"Host": host}, data)[0] == 200  # no Origin: curl, scripts
    assert _raw(served, {"Host": host, "Origin": f"http://{host}"}, data)[0] == 200  # the page itself
    for origin in ("https://evil.example", f"http://localhost:{port}", "null", f"http://{host}.evil.example"):
        status, text = _raw(served, {"Host": host, "Origin": origin}, data)
        assert status == 403 and "cross-site request" in text, (origin, text)


def test_a_foreign_host_header_is_refused(served, tiny_data):
    port = served.rsplit(":", 1)[1]
    data = _jpeg(tiny_data).read_bytes()
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):  # DNS rebinding
        assert _raw(served, {"Host": host}, data)[0] == 400, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"detector.example:{port}"):
        assert _raw(served, {"Host": host}, data)[0] == 200, host  # local names and --allowed-host


def _answered(s) -> bool:
    """Whether the app has answered (or closed) a connection: something to read, without waiting."""
    import socket

    timeout = s.gettimeout()
    s.setblocking(False)  # a socket with a timeout would wait for readability first
    try:
        s.recv(1, socket.MSG_PEEK)  # data, or b"" once closed
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.settimeout(timeout)


def test_a_thousand_trickling_uploads_do_not_stop_a_normal_request(champion, tiny_data, tmp_path):
    """1,000 connections send their headers, then a body byte at a time; a normal POST still gets its
    verdict while every one of them is still open (none answered yet), and every trickler is answered
    408 and dropped once its body deadline has passed."""
    import resource
    import socket
    import sys

    # The body deadline, the bound the app enforces: long enough that opening 1,000 connections and
    # one verdict fit in it on a loaded machine; the test asserts the order of events, not their time.
    n, deadline = 1000, 10.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 500), hard))
    code = ("from dfk.app.server import Limits, serve; "
            f"serve('models:/deepfake-detector@champion', port=0, limits=Limits(body_seconds={deadline}))")
    with running([sys.executable, "-c", code], "/healthz", env=dict(os.environ, MLFLOW_TRACKING_URI=champion),
                 cwd=tmp_path, timeout=120) as proc:
        base, port = proc.url, int(proc.url.rsplit(":", 1)[1])
        head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 100000\r\n\r\n").encode()
        socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(head)
                socks.append(s)
            for s in socks:
                s.sendall(b"\xff")  # one byte each: every connection is a request in progress
            status, r = _post(base, _jpeg(tiny_data).read_bytes())
            assert status == 200 and r["label"] in ("fake", "real")
            early = sum(_answered(s) for s in socks)
            assert early == 0, f"{early} tricklers were answered before the normal request"  # all 1,000 still open
            answers = []
            give_up = time.monotonic() + deadline + 120  # a hang guard, not a speed limit
            for s in socks:
                try:
                    while time.monotonic() < give_up:
                        s.settimeout(0.5)
                        try:
                            got = s.recv(64)
                            break
                        except TimeoutError:
                            s.sendall(b"\xff")  # still trickling
                    else:
                        got = b"still open"
                except OSError as exc:
                    got = f"closed ({exc})".encode()
                answers.append(got)
            assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
        finally:
            for s in socks:
                s.close()


# ----------------------------------------------------------------------------- browser
@pytest.fixture
def page(served):
    require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(served)
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))
        yield driver


def _upload(driver, *paths, timeout=60):
    """Choose files in the page's file input and wait for the page to report it has checked them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(driver.find_elements(By.CSS_SELECTOR, "li.result"))
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked")
                                         and len(d.find_elements(By.CSS_SELECTOR, "li.result")) == before + len(paths)
                                         and d.find_element(By.ID, "files").is_enabled())
    return driver.find_elements(By.CSS_SELECTOR, "li.result")[: len(paths)]  # newest first


def test_page_shows_probability_and_overlay_then_an_error_and_keeps_working(page, served, tiny_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    info = page.find_element(By.ID, "model-info").text
    assert "deepfake-detector" in info and "champion" in info and "cnn" in info
    link = page.find_element(By.CSS_SELECTOR, "#model-info a")
    assert link.get_attribute("href").startswith(f"{UI}/#/experiments/")

    jpeg = _jpeg(tiny_data)
    (card,) = _upload(page, jpeg)
    _, expected = _post(served, jpeg.read_bytes())
    assert float(card.get_attribute("data-probability")) == pytest.approx(expected["probability_fake"], abs=1e-6)
    assert card.find_element(By.CSS_SELECTOR, ".prob").text == f"{100 * expected['probability_fake']:.1f}%"
    assert card.find_element(By.CSS_SELECTOR, ".badge").text == expected["label"].upper()
    assert f"threshold {100 * expected['threshold']:.1f}%" in card.text
    overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
    WebDriverWait(page, 10).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
    assert page.execute_script("return arguments[0].naturalWidth", overlay) == 64

    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    (bad,) = _upload(page, text)
    assert "notes.txt: not a usable image" in bad.find_element(By.CSS_SELECTOR, ".verdict.error").text
    assert "Traceback" not in page.page_source

    (again,) = _upload(page, _jpeg(tiny_data, "Real"))
    assert again.get_attribute("data-label") in ("fake", "real") and not again.get_attribute("data-error")
    assert request(f"{served}/healthz")[0] == 200


_DROP = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
const zone = document.getElementById("drop");
zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
const highlighted = zone.classList.contains("over");
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
return highlighted;
"""


def test_dropping_an_image_on_the_page_checks_it(page, tiny_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    highlighted = page.execute_script(_DROP, base64.b64encode(_jpeg(tiny_data).read_bytes()).decode())
    assert highlighted
    WebDriverWait(page, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked 1 of 1"))
    card = page.find_element(By.CSS_SELECTOR, "li.result")
    assert card.find_element(By.TAG_NAME, "h2").text == "dropped.jpg"
    assert card.get_attribute("data-label") in ("fake", "real")


def test_too_many_files_at_once_get_a_message_and_nothing_is_sent(page, tiny_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = sorted((tiny_data / "Train").rglob("*.jpg"))[:13]
    page.find_element(By.ID, "files").send_keys("\n".join(map(str, files)))
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "alert").text)
    assert "You chose 13 files; at most 12" in page.find_element(By.ID, "alert").text
    assert not page.find_elements(By.CSS_SELECTOR, "li.result")


_CONTRAST = """
const lum = (c) => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
  v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const ratio = (fg, bg) => { const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x); return (a + 0.05) / (b + 0.05); };
const bgOf = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
  if (c !== "rgba(0, 0, 0, 0)" && c !== "transparent") return c; } return "rgb(255, 255, 255)"; };
return [...document.querySelectorAll(arguments[0])].map((el) => ratio(getComputedStyle(el).color, bgOf(el)));
"""

_WATCH_BUSY = """
window.seen = {busy: false, disabled: false, ariaBusy: false};
new MutationObserver(() => {
  seen.busy ||= document.getElementById("status").classList.contains("busy");
  seen.disabled ||= document.getElementById("files").disabled;
  seen.ariaBusy ||= document.getElementById("results").getAttribute("aria-busy") === "true";
}).observe(document.body, {attributes: true, subtree: true, childList: true});
"""


def test_page_is_usable_by_keyboard_at_phone_width_with_readable_contrast_and_a_busy_state(page, tiny_data):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
    page.refresh()
    WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))
    page.execute_script(_WATCH_BUSY)
    (card,) = _upload(page, _jpeg(tiny_data))
    assert page.execute_script("return seen") == {"busy": True, "disabled": True, "ariaBusy": True}
    assert "busy" not in page.find_element(By.ID, "status").get_attribute("class")

    # Phone width: nothing wider than the screen; the two pictures stack.
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    original, overlay = card.find_elements(By.CSS_SELECTOR, "figure")
    assert overlay.rect["y"] >= original.rect["y"] + original.rect["height"]

    # Keyboard: Tab from the top of the page reaches the file chooser, and focus is visible there.
    page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(10):
        ActionChains(page).send_keys(Keys.TAB).perform()
        if page.switch_to.active_element.get_attribute("id") == "files":
            break
    assert page.switch_to.active_element.get_attribute("id") == "files"
    assert page.execute_script("return getComputedStyle(document.activeElement).outlineStyle") != "none"

    # Contrast (WCAG AA, 4.5:1) of body text, labels, captions, badges and the verdict.
    ratios = page.execute_script(_CONTRAST, "h1, .lead, dt, dd, figcaption, .badge, .prob, .verdict span, #status")
    assert ratios and min(ratios) >= 4.5, ratios
