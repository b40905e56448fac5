"""Screenshots of a real `mlflow ui` and of `dfk app` on the champion, for the README and docs/.

Not part of CI. Needs Debian's `chromium` and `chromium-driver` (driven by selenium through
:func:`tests.browser.chromium`, as the web-app tests are). Point it at a store with finished runs
and a champion; the pictures in docs/img are taken in the project checkout after `make demo`:

    make demo
    .venv/bin/python -m scripts.ui_screenshots --store sqlite:///mlflow.db --out docs/img

What it does to the pages, and why:

* MLflow 3 opens its "MLflow Assistant" side panel by itself the first time a browser opens a UI
  on localhost, and shows a floating "MLflow Assistant" button whenever the panel is closed. The
  page keeps both in localStorage (``mlflow.assistant.fab.autoOpenedOnFirstLoad_v1`` and
  ``mlflow.assistant.panelOpen_v1``): they are set to "already opened once" and "closed" before
  the UI is first loaded, the button (every ``[data-assistant-ui]`` element) is hidden, and a
  panel that shows up anyway is closed with its own close button. The sidebar is set to MLflow's
  "Model training" mode (its default, "GenAI", is for LLM apps) the same way.
* The artifact view prints the artifact's absolute path ("Path: /home/.../mlruns/1/<run>/..."),
  that is, the folder the store was made in on the machine that took the screenshot. A run
  records its artifact location when it is created, so serving the store through
  ``mlflow server --serve-artifacts`` would not turn existing runs' paths into
  ``mlflow-artifacts:/...``, and rewriting the text would show a path that exists nowhere. So that
  one line (with its copy button) is left out of the page before the screenshot; the artifact's
  name and size above it stay.

Each page is taken once it has rendered: the content it is taken for is there (the run in the
table, the charts, the image) and the page has stopped changing for a moment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path

from bench.localserver import running, venv_tool

#: The browser window (CSS pixels) of the MLflow UI screenshots.
UI_SIZE = (1440, 900)
#: The web-app screenshot's window; it grows to the page's height once both verdicts are there.
APP_SIZE = (1200, 900)

#: localStorage the MLflow UI reads when it starts (its useLocalStorage keeps ``key_v<version>``
#: as JSON): the assistant panel was auto-opened once already and is closed, and the sidebar is
#: the "Model training" one (not "GenAI", whose run pages highlight "Evaluation runs").
UI_SETTINGS = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false",
               "mlflow.workflowType_v1": '"machine_learning"'}

#: Run in the page before each screenshot: hide the assistant's floating button, leave out
#: the artifact view's absolute "Path:" line, drop the focus ring and go to the top.
TIDY_PAGE = """
if (!document.getElementById('dfk-screenshot-style')) {
  const style = document.createElement('style');
  style.id = 'dfk-screenshot-style';
  style.textContent = '[data-assistant-ui] { display: none !important; }';
  document.head.appendChild(style);
}
for (const el of document.querySelectorAll('div[title]')) {
  if (el.textContent.trim().startsWith('Path:')) el.parentElement.style.display = 'none';
}
if (document.activeElement) document.activeElement.blur();
window.scrollTo(0, 0);
"""

#: True while the page shows a loading indicator.
LOADING = """
return [...document.querySelectorAll('[role=progressbar], [aria-busy=true], .ant-spin-spinning, [class*=spinner], [class*=Spinner], [class*=skeleton], [class*=Skeleton]')]
  .some(el => el.getClientRects().length > 0);
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="tracking URI of the store (default: %(default)s)")
    parser.add_argument("--experiment", default="dfk", help="experiment whose runs are shown (default: %(default)s)")
    parser.add_argument("--out", default="docs/img", help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--no-app", action="store_true",
                        help="skip app.png (`dfk app` on models:/deepfake-detector@champion, which the store must have)")
    args = parser.parse_args()
    from tests.browser import CHROMEDRIVER, CHROMIUM

    if not (CHROMIUM and CHROMEDRIVER):
        sys.exit("chromium and chromedriver not found: apt-get install chromium chromium-driver")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    mlflow_ui_screenshots(args.store, args.experiment, out)
    if not args.no_app:
        app_screenshot(args.store, out / "app.png")
    print(f"done in {time.monotonic() - start:.0f} s")


def mlflow_ui_screenshots(store: str, experiment: str, out: Path) -> None:
    import mlflow
    from selenium.webdriver.common.by import By

    from tests.browser import chromium

    mlflow.set_tracking_uri(store)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no experiment {experiment!r} in {store}")
    runs = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED' and tags.arch != ''",
                              order_by=["metrics.test_roc_auc DESC"], output_format="list")
    runs = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    if not runs:
        sys.exit(f"no finished training run in experiment {experiment!r} of {store}")
    best = runs[0]
    e, run_id, name = exp.experiment_id, best.info.run_id, best.info.run_name
    ids = json.dumps([r.info.run_id for r in runs[:4]])
    q = urllib.parse.quote
    # name -> (page, JavaScript that is true once the page shows what it is taken for)
    has_text = f"return document.body.innerText.includes({json.dumps(name)})"
    # the runs list shows top-level runs: a pipeline's training runs are children of its run
    parent = best.data.tags.get("mlflow.parentRunId")
    listed = mlflow.get_run(parent).info.run_name if parent else name
    on_list = f"return document.body.innerText.includes({json.dumps(listed)})"
    has_plot = "return document.querySelectorAll('.js-plotly-plot, canvas, svg.main-svg, .recharts-surface').length > 0"
    has_image = ("return [...document.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0"
                 " && i.getBoundingClientRect().width > 200)")
    artifacts = f"#/experiments/{e}/runs/{run_id}/artifacts"
    pages = {
        "ui_runs.png": (f"#/experiments/{e}/runs", on_list),
        "ui_run_overview.png": (f"#/experiments/{e}/runs/{run_id}", has_text + " && document.body.innerText.includes('Parameters')"),
        "ui_run_metrics.png": (f"#/experiments/{e}/runs/{run_id}/model-metrics", has_plot),
        "ui_confusion_matrix.png": (f"{artifacts}/evaluation/test_confusion_matrix.png", has_image),
        "ui_gradcam.png": (f"{artifacts}/gradcam/gradcam_gallery.png", has_image),
        "ui_compare.png": (f"#/compare-runs?runs={q(ids)}&experiments={q(json.dumps([e]))}", has_plot),
    }
    cmd = [venv_tool("mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", "0"]
    with running(cmd, "/health") as server, chromium(*UI_SIZE) as page:
        base = server.url
        viewport(page, *UI_SIZE)
        page.get(f"{base}/health")  # same origin as the UI, which has not run yet: set what it reads at start
        for key, value in UI_SETTINGS.items():
            page.execute_script("window.localStorage.setItem(arguments[0], arguments[1])", key, value)
        for file, (fragment, ready) in pages.items():
            t = time.monotonic()
            page.get("about:blank")  # each page a fresh load: a fragment alone would not reload the UI
            page.get(f"{base}/{fragment}")
            wait_until(page, ready, f"{file}: {fragment}")
            close_assistant(page, By)
            settle(page)
            page.execute_script(TIDY_PAGE)
            time.sleep(0.3)
            page.save_screenshot(str(out / file))
            print(f"wrote {out / file} ({time.monotonic() - t:.0f} s)", flush=True)


def viewport(page, width: int, height: int) -> None:
    """Make the page itself ``width`` x ``height`` (--window-size also counts the browser's own frame)."""
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def wait_until(page, script: str, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not page.execute_script(script):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not render within {timeout:.0f} s")
        time.sleep(0.25)


def settle(page, quiet: float = 1.5, timeout: float = 30) -> None:
    """Wait until no loading indicator shows and the page's markup has not changed for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = (page.execute_script(LOADING), page.execute_script("return document.body.innerHTML.length"))
        if now != last or now[0]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.25)


def close_assistant(page, By) -> None:
    """Close the assistant panel if it opened after all, with the close button of its header."""
    for button in page.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        if button.is_displayed():
            button.click()
            time.sleep(0.5)


def app_screenshot(store: str, path: Path) -> None:
    """`dfk app` on the champion, with the first fake and the first real of the built-in test split."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dfk.data.synth import builtin_dataset
    from tests.browser import chromium

    data = builtin_dataset()
    shots = [min((data / "Test" / kind).glob("*.jpg")) for kind in ("Fake", "Real")]
    with running([venv_tool("dfk"), "app", "--port", "0"], "/healthz",
                 env=dict(os.environ, MLFLOW_TRACKING_URI=store)) as server, chromium(*APP_SIZE) as page:
        viewport(page, *APP_SIZE)
        page.get(server.url)
        WebDriverWait(page, 60).until(lambda d: d.find_element(By.ID, "model-info").get_attribute("data-loaded"))
        page.find_element(By.ID, "files").send_keys("\n".join(map(str, shots)))
        WebDriverWait(page, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("Checked"))
        wait_until(page, "return [...document.images].every(i => i.complete)", "app.png: the overlays")
        page.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
        # As tall as the page, so that both verdicts show whole.
        viewport(page, APP_SIZE[0], max(APP_SIZE[1], page.execute_script("return document.documentElement.scrollHeight")))
        time.sleep(0.3)
        page.save_screenshot(str(path))
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
