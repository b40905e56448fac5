"""Screenshots of a real `mlflow ui` and of `dfk app` on the champion, for the README.

Not part of CI. Needs `apt-get install chromium chromium-driver`. Point it at a store with
finished runs and a champion (after `make demo`, `mlflow run .` or `dfk main`):

    .venv/bin/python -m scripts.ui_screenshots --store sqlite:///mlflow.db --out docs/img
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.localserver import free_port, running, venv_tool

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1440,900", "--virtual-time-budget=15000"]


def shoot(url: str, path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=120)
    print("wrote", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="dfk")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()

    import mlflow

    mlflow.set_tracking_uri(args.store)
    exp = mlflow.get_experiment_by_name(args.experiment)
    runs = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED' and tags.arch != ''",
                              order_by=["metrics.test_roc_auc DESC"], output_format="list")
    runs = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    best = runs[0].info.run_id
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [venv_tool("mlflow"), "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, f"{base}/health"):
        e = exp.experiment_id
        ids = json.dumps([r.info.run_id for r in runs[:4]])
        pages = {
            "ui_runs.png": f"{base}/#/experiments/{e}/runs",
            "ui_run_overview.png": f"{base}/#/experiments/{e}/runs/{best}",
            "ui_run_metrics.png": f"{base}/#/experiments/{e}/runs/{best}/model-metrics",
            "ui_confusion_matrix.png": f"{base}/#/experiments/{e}/runs/{best}/artifacts/evaluation/test_confusion_matrix.png",
            "ui_gradcam.png": f"{base}/#/experiments/{e}/runs/{best}/artifacts/gradcam/gradcam_gallery.png",
            "ui_compare.png": f"{base}/#/compare-runs?runs={urllib.request.quote(ids)}&experiments={urllib.request.quote(json.dumps([e]))}",
        }
        for name, url in pages.items():
            shoot(url, out / name)
    app_screenshot(args.store, out / "app.png")


def app_screenshot(store: str, path: Path) -> None:
    """`dfk app` on the champion, with the first fake and the first real of the built-in test split."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dfk.data.synth import builtin_dataset
    from tests.browser import chromium

    data = builtin_dataset()
    shots = [sorted((data / "Test" / kind).glob("*.jpg"))[0] for kind in ("Fake", "Real")]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([venv_tool("dfk"), "app", "--port", str(port)], f"{base}/healthz",
                 env=dict(os.environ, MLFLOW_TRACKING_URI=store)), chromium(1200, 1500) as page:
        page.get(base)
        WebDriverWait(page, 60).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))
        page.find_element(By.ID, "files").send_keys("\n".join(map(str, shots)))
        WebDriverWait(page, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked"))
        page.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
        page.save_screenshot(str(path))
    print("wrote", path)


if __name__ == "__main__":
    main()
