"""Web-app latency: the page's verdict for one 256 px image against in-process predict + Grad-CAM.

For each architecture: train briefly on a 256 px built-in set, register it, start `dfk app` on a
free 127.0.0.1 port and open the page in Debian's headless Chromium. Then, alternating so that
background load hits both sides alike, time
  in-process   `pyfunc.predict` on the image bytes, plus decode and `dfk.explain.gradcam.gradcam` of that image
  page         choose the file in the page until its verdict is on screen (the page's own clock,
               from sending the file to drawing the verdict with its overlay)
  HTTP         `POST /api/predict` from Python, for reference
and report page / in-process (goal <= 2). The cnn run also saves the README's screenshot.

    .venv/bin/python -m bench.webapp            # writes the webapp section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dfk.settings import SETTINGS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))]


def measure(arch: str, epochs: int, repeats: int, tmp: Path, data: Path, screenshot: Path | None) -> dict:
    import mlflow
    import numpy as np
    import pandas as pd
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dfk.config import TrainConfig
    from dfk.data.decode import decode_image
    from dfk.explain.gradcam import gradcam, gradient_function
    from bench.localserver import free_port, request, running, venv_tool
    from dfk.registry.promotion import register_best
    from dfk.training.trainer import train
    from tests.browser import chromium

    uri = f"sqlite:///{tmp}/{arch}.db"
    mlflow.set_tracking_uri(uri)
    train(TrainConfig.from_overrides(dict(arch=arch, data_dir=str(data), image_size=256, epochs=epochs,
                                          weights="none", gradcam_images=0)), experiment="bench")
    register_best("bench")
    model = mlflow.pyfunc.load_model(SETTINGS.champion_uri)
    detector = model.unwrap_python_model()
    fn = gradient_function(detector.model)
    image = sorted((data / "Test" / "Fake").glob("*.jpg"))[0]
    raw = image.read_bytes()
    frame = pd.DataFrame({"image": [raw]})

    def in_process():
        model.predict(frame)
        gradcam(detector.model, decode_image(raw, 256)[None].astype(np.float32), fn=fn)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    times = {"in-process": [], "page": [], "HTTP": []}
    with running([venv_tool("dfk"), "app", "--port", str(port)], f"{base}/healthz",
                 env=dict(os.environ, MLFLOW_TRACKING_URI=uri), cwd=tmp), chromium(1200, 1500) as page:
        page.get(base)
        WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))

        def on_page():
            n = len(page.find_elements(By.CSS_SELECTOR, "li.result"))
            page.find_element(By.ID, "files").send_keys(str(image))
            WebDriverWait(page, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.result")) > n
                                           and d.find_element(By.CSS_SELECTOR, "li.result").get_attribute("data-ms"))
            card = page.find_element(By.CSS_SELECTOR, "li.result")
            assert not card.get_attribute("data-error"), card.get_attribute("data-error")
            ms = float(card.get_attribute("data-ms"))
            page.execute_script("document.getElementById('results').replaceChildren()")  # keep the page small
            return ms / 1000

        def timed(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        for _ in range(3):  # warm-up: graph tracing, first requests, image decoders
            in_process(), on_page(), request(f"{base}/api/predict", raw, "application/octet-stream")
        for _ in range(repeats):
            times["in-process"].append(timed(in_process))
            times["page"].append(on_page())
            times["HTTP"].append(timed(lambda: request(f"{base}/api/predict", raw, "application/octet-stream")))
        if screenshot is not None:
            shots = [sorted((data / "Test" / kind).glob("*.jpg"))[1] for kind in ("Fake", "Real")]
            page.find_element(By.ID, "files").send_keys("\n".join(map(str, shots)))
            WebDriverWait(page, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked"))
            page.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.save_screenshot(str(screenshot))
    return {k: (statistics.median(v), _p90(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="cnn,resnet")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="cnn epochs (resnet trains 1: it is only timed)")
    args = parser.parse_args()

    from bench.report import write_section
    from dfk.data.synth import SynthSpec, generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(SynthSpec(train=24, validation=8, test=8, image_size=256, seed=3), tmp / "d")
        for arch in args.archs.split(","):
            r = measure(arch, args.epochs if arch == "cnn" else 1, args.repeats, tmp, data, None)
            print(arch, r, flush=True)
            rows.append((arch, r))
    lines = [
        "## Web app latency (`python -m bench.webapp`)",
        "",
        f"One 256 px JPEG from the built-in set, {args.repeats} times after 3 warm-ups, the three ways alternating. "
        "*In-process*: `pyfunc.predict` on the bytes plus decode and `dfk.explain.gradcam.gradcam` of the image. "
        "*Page*: `dfk app` on 127.0.0.1 in headless Chromium, from sending the chosen file to the verdict and "
        "overlay on screen (the page's clock). *HTTP*: `POST /api/predict` from Python.",
        "",
        "| model | in-process p50 (ms) | page p50 (ms) | HTTP p50 (ms) | page p90 (ms) | page / in-process p50 (goal <= 2) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arch, r in rows:
        lines.append(f"| {arch} | {1000 * r['in-process'][0]:.1f} | {1000 * r['page'][0]:.1f} | {1000 * r['HTTP'][0]:.1f} "
                     f"| {1000 * r['page'][1]:.1f} | **{r['page'][0] / r['in-process'][0]:.2f}** |")
    lines += ["", "The page does one forward and backward pass per image (Grad-CAM's pass also gives the "
              "probability), where the in-process reference does a forward pass for `predict` and another "
              "for Grad-CAM."]
    write_section("webapp", "\n".join(lines))


if __name__ == "__main__":
    main()
