"""Example of tests/mlflow_ui.py: what a user sees of a small store in the real MLflow UI.

The store is built here with MlflowClient (not through filterviz): an experiment tagged as a
model-training one, two runs with params, a metric over steps, one image key logged with
log_image at several steps, and a plain PNG artifact. Screenshots go to a temporary folder,
or to $FILTERVIZ_UI_SCREENSHOTS when set (e.g. docs/ to refresh the README's pictures).
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from mlflow_ui import (  # noqa: F401  (chromium_browser, page_errors, ui_page: fixtures)
    chart_card,
    chart_view_url,
    chromium_browser,
    experiment_url,
    image_runs,
    image_steps,
    images_loaded,
    mlflow_ui,
    page_errors,
    require_chromium,
    run_metrics_url,
    set_step,
    ui_page,
    unexpected_errors,
    wait_until,
)

STEPS = 4
KEY = "filter_0000"


def build_store(root: Path) -> dict:
    from mlflow import MlflowClient
    from PIL import Image

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        "ui-harness-demo",
        artifact_location=str(root / "artifacts"),
        tags={"mlflow.experimentKind": "custom_model_development",
              "mlflow.note.content": "Two runs, one image key over four steps."},
    )
    runs = {}
    for r, name in enumerate(["alpha-run", "beta-run"]):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        for key, value in {"layer": f"block{r + 1}_conv1", "lr": 0.1 * (r + 1), "steps": STEPS}.items():
            client.log_param(run_id, key, value)
        for s in range(STEPS):
            client.log_metric(run_id, "loss", 1.0 / (s + 1 + r), step=s)
            image = np.zeros((64, 64, 3), np.uint8)
            image[..., r] = 60 * (s + 1)             # alpha: red, beta: green, brighter each step
            image[s * 16:(s + 1) * 16, :, 2] = 255   # a blue band that moves down each step
            client.log_image(run_id, image, key=KEY, step=s)
        plain = root / f"{name}.png"
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(plain)
        client.log_artifact(run_id, str(plain))
        client.set_terminated(run_id)
        runs[name] = run_id
    return {"uri": uri, "experiment_id": experiment_id, "runs": runs}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require_chromium()  # skip before the ~20 s of store and server, not after
    return build_store(tmp_path_factory.mktemp("ui-store"))


@pytest.fixture(scope="module")
def ui(store):
    with mlflow_ui(store["uri"]) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = os.environ.get("FILTERVIZ_UI_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("ui-shots")


def test_experiment_opens_on_its_runs(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    page.goto(experiment_url(ui, store["experiment_id"]))
    for name in store["runs"]:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/experiments/{store['experiment_id']}/runs\?workflowType=machine_learning"))
    expect(page.get_by_text("Two runs, one image key over four steps.")).to_be_visible()
    expect(page.get_by_text("2 matching runs")).to_be_visible()
    page.screenshot(path=shots / "ui-runs.png")
    assert unexpected_errors(page_errors) == []


def test_run_page_shows_images_with_a_step_slider(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    run_id = store["runs"]["alpha-run"]
    page.goto(run_metrics_url(ui, store["experiment_id"], run_id))
    card = chart_card(page, KEY)
    slider = card.get_by_role("slider")
    expect(slider).to_have_attribute("aria-valuemax", str(STEPS - 1))
    expect(slider).to_have_attribute("aria-valuenow", "0")
    wait_until(lambda: images_loaded(card) and image_steps(card) == [0], what="step 0's image")
    assert image_runs(card) == [run_id]
    expect(chart_card(page, "loss")).to_be_visible()

    slider.focus()
    page.keyboard.press("ArrowRight")
    wait_until(lambda: image_steps(card) == [1], what="the slider's step 1")
    set_step(card, STEPS - 1)
    expect(slider).to_have_attribute("aria-valuenow", str(STEPS - 1))
    wait_until(lambda: images_loaded(card) and image_steps(card) == [STEPS - 1], what="the last step's image")
    page.screenshot(path=shots / "ui-run-images.png")
    assert unexpected_errors(page_errors) == []


def test_chart_view_compares_both_runs(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    page.goto(chart_view_url(ui, store["experiment_id"]))
    images = chart_card(page, KEY)
    loss = chart_card(page, "loss")
    for name in store["runs"]:
        expect(images).to_contain_text(name)
        expect(loss).to_contain_text(f"{name} (loss)")  # the line chart's legend
    wait_until(lambda: images_loaded(images) and sorted(image_runs(images)) == sorted(store["runs"].values()),
               what="both runs' images")
    assert image_steps(images) == [0, 0]
    page.screenshot(path=shots / "ui-compare.png")

    # The card's full-screen view shows the runs' images side by side, with one slider.
    images.locator('button[data-component-id="fullscreen_button_chartcard"]').click()
    dialog = page.get_by_role("dialog")
    set_step(dialog, 2)
    wait_until(lambda: images_loaded(dialog) and image_steps(dialog) == [2, 2], what="both runs at step 2")
    page.screenshot(path=shots / "ui-compare-images.png")
    assert unexpected_errors(page_errors) == []
