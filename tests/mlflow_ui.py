"""Open the MLflow UI in headless Chromium from a test: a helper module, not a test file.

    from mlflow_ui import mlflow_ui, require_chromium, ui_page, page_errors  # fixtures too

- `mlflow_ui(backend_store_uri)`: a context manager that runs `python -m mlflow ui` on a free
  port of 127.0.0.1, waits (bounded) for /health, yields the base URL and stops the server
  (its whole process group) afterwards.
- `ui_page`: a fixture giving a Playwright page in headless Debian Chromium (skips, saying
  why, without playwright or without the browser; `bash .ci/chromium` installs it).
- `page_errors`: the console errors and uncaught exceptions of that page, as a list.

What the MLflow 3.17 UI does, and what these helpers assume (seen in headless Chromium):
- An experiment URL opens on the GenAI overview unless it carries
  `workflowType=machine_learning`; the `mlflow.experimentKind` tag does not change that.
  The URL builders below always add it.
- `log_image(..., key=K, step=S)` images show as one chart card per key (an "Image grid"
  chart), with a step slider, on a run's "Model metrics" tab and in the experiment's chart
  view, where every visible run gets its own image in the card.
- Each picture in an image card is captioned with every param of its run unless the card's
  "Show run parameters" is turned off (`hide_run_params`); with filterviz's ~18 params the
  caption leaves the picture little room.
- The classic compare page (`#/compare-runs?runs=[...]`) shows neither those images nor
  per-step metric charts.
"""

from __future__ import annotations

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
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

CHROMIUM = os.environ.get("FILTERVIZ_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000  # for every wait on the page, expect() included

# Every page of the UI asks for the signed-in user, which a server without auth answers 404;
# the charts' resize observers warn when a layout change outruns them (a browser notice).
HARMLESS_ERRORS = (re.compile(r"/ajax-api/2\.0/mlflow/users/current\b"),
                   re.compile(r"ResizeObserver loop completed with undelivered notifications"))

# Run before each page's own scripts: keep the "MLflow Assistant" side panel closed (it opens
# by itself on a first visit and takes a third of the width of every screenshot).
_QUIET_ASSISTANT = """
try {
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
} catch (e) {}
"""

# ---------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_ui(backend_store_uri: str, *, startup_timeout: float = 120, tries: int = 3) -> Iterator[str]:
    """`python -m mlflow ui` on a free port; yields its base URL, e.g. http://127.0.0.1:40123.

    One worker and no job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): the UI needs
    neither, and together they make it start in ~15 s instead of 30-120 s on a busy 2-core
    machine. The server runs in its own session so that stopping it stops everything it
    spawned. It runs in a scratch folder (a default ./mlartifacts lands there, not in the
    repository), which also keeps its log; a failed start raises with the log's tail.
    """
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-ui-"))
    log_path = workdir / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    proc = None
    try:
        for attempt in range(1, tries + 1):
            port = free_port()
            logged = log_path.stat().st_size if log_path.exists() else 0
            url = f"http://127.0.0.1:{port}"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri,
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline and proc.poll() is None and not _healthy(url):
                time.sleep(0.25)
            if proc.poll() is None and _healthy(url):
                break
            early_exit = proc.poll()
            _stop(proc)
            tail = log_path.read_bytes()[logged:].decode(errors="replace")[-3000:]
            # a port taken between free_port() and the bind: try another one
            if attempt < tries and "address already in use" in tail.lower():
                continue
            why = (f"exited with status {early_exit}" if early_exit is not None
                   else f"did not answer {url}/health within {startup_timeout:.0f} s")
            raise RuntimeError(f"`mlflow ui` {why}. Its log ends:\n{tail}")
        yield url
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------- the browser


def require_chromium() -> None:
    """Skip the calling test, saying why, unless playwright and a Chromium are here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (`bash .ci/chromium` installs Debian's; "
                    "FILTERVIZ_CHROMIUM points elsewhere)")


@pytest.fixture(scope="session")
def chromium_browser():
    """One headless Debian Chromium for the session (Playwright's own download is not used)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page_errors() -> list[dict]:
    """Console errors and uncaught exceptions of `ui_page`: dicts with kind, text, url."""
    return []


@pytest.fixture
def ui_page(chromium_browser, page_errors):
    """A fresh page (own context: empty localStorage) with the Assistant panel kept closed."""
    from playwright.sync_api import expect

    # A busy 2-core machine needs more than Playwright's 5 s for the UI's first render.
    expect.set_options(timeout=TIMEOUT_MS)
    context = chromium_browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(_QUIET_ASSISTANT)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and page_errors.append(
        {"kind": "console", "text": m.text, "url": (m.location or {}).get("url", "")}))
    page.on("pageerror", lambda e: page_errors.append({"kind": "exception", "text": str(e), "url": page.url}))
    yield page
    context.close()


def unexpected_errors(errors: list[dict]) -> list[dict]:
    """The entries of `page_errors` that are not known to be harmless."""
    return [e for e in errors if not any(p.search(e["url"]) or p.search(e["text"]) for p in HARMLESS_ERRORS)]


# ---------------------------------------------------------------------------- URLs and selectors

ML = "workflowType=machine_learning"


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs list (redirects to .../runs?workflowType=machine_learning&...)."""
    return f"{base}/#/experiments/{experiment_id}?{ML}"


def run_metrics_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's "Model metrics" tab: one card per metric key and per image key."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{ML}"


def chart_view_url(base: str, experiment_id: str) -> str:
    """The experiment's chart view: every visible run (the first 10) in every card."""
    return f"{base}/#/experiments/{experiment_id}/runs?{ML}&compareRunsMode=CHART"


CHART_CARD = '[data-testid="experiment-view-compare-runs-card"]'
CARD_IMAGE = 'img[src*="get-artifact"]'  # src: get-artifact?path=images/<key>+step+<s>+...&run_uuid=<id>


def chart_card(page, title: str):
    """The chart card titled `title` (a metric key, or an image key)."""
    return page.locator(CHART_CARD).filter(has=page.locator(f'h4[title="{title}"]'))


def image_steps(card) -> list[int]:
    """The steps of the images a card shows now, read from their src."""
    srcs = card.locator(CARD_IMAGE).evaluate_all("els => els.map(e => e.getAttribute('src'))")
    return [int(m.group(1)) for s in srcs if (m := re.search(r"%2Bstep%2B(\d+)%2B", s))]


def image_runs(card) -> list[str]:
    """The run ids of the images a card shows now."""
    srcs = card.locator(CARD_IMAGE).evaluate_all("els => els.map(e => e.getAttribute('src'))")
    return [m.group(1) for s in srcs if (m := re.search(r"run_uuid=([0-9a-f]+)", s))]


def images_loaded(card) -> bool:
    """Whether every image of the card has been fetched and decoded (not a broken icon)."""
    return card.locator(CARD_IMAGE).evaluate_all(
        "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)")


def hide_run_params(page, card) -> None:
    """Turn off the card's "Show run parameters" (⋮ > Configure), as a user does to give the
    pictures the card's room: MLflow 3.17 captions each picture with every param of its run."""
    card.locator('[data-testid="experiment-view-compare-runs-card-menu"]').click()
    page.get_by_role("menuitem", name="Configure").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("switch", name="Show run parameters").click()
    dialog.get_by_role("button", name="Save changes").click()
    dialog.wait_for(state="hidden")


def set_step(card, step: int) -> None:
    """Move a card's step slider by its number box (it commits on blur, not on Enter)."""
    box = card.locator('input[type="number"]')
    box.fill(str(step))
    box.blur()


def wait_until(check: Callable[[], object], timeout: float = 30, what: str = "condition"):
    """Poll `check` until it returns something truthy; returns that, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
