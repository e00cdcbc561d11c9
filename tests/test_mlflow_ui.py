"""What a user sees of filterviz's runs in the real MLflow UI, in headless Chromium.

The store is made by filterviz itself: a two-job sweep. Screenshots go to a temporary
folder, or to $FILTERVIZ_UI_SCREENSHOTS (docs/ refreshes the pictures of docs/runs.md).
"""

import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import WEIGHTS, needs_weights, run_cli
from mlflow_ui import (
    chart_card,
    chart_view_url,
    experiment_url,
    hide_run_params,
    image_runs,
    image_steps,
    images_loaded,
    mlflow_ui,
    require_chromium,
    set_step,
    unexpected_errors,
    wait_until,
)

pytestmark = needs_weights
ITERS = 20
PARENT = "vgg16 block2_conv1 · sweep step_size=0.02,0.1"  # the sweep's run name


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require_chromium()  # skip before the sweep and the server, not after
    cwd = tmp_path_factory.mktemp("ui-store")
    proc = run_cli("-m", "layer=block2_conv1", "filters=0:2", "step_size=0.02,0.1", f"iters={ITERS}",
                   "input_size=64", f"model.weights={WEIGHTS}", cwd=cwd, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("filterviz")
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("filterviz.sweep") != "parent"}
    # each job's console says where its run is: "then open <the run's page in the UI>"
    opened = [line.split("then open ", 1)[1].strip() for line in proc.stdout.splitlines() if "then open " in line]
    return {"uri": uri, "experiment_id": experiment.experiment_id, "runs": runs, "printed_urls": opened}


@pytest.fixture(scope="module")
def ui(store):
    with mlflow_ui(store["uri"]) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = os.environ.get("FILTERVIZ_UI_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("ui-shots")


def unfold_sweep(page) -> None:
    """The runs list shows a sweep as its parent run, its jobs folded in: unfold them."""
    from playwright.sync_api import expect

    parent = page.get_by_role("link", name=PARENT, exact=True)
    expect(parent).to_be_visible()
    parent.locator("xpath=ancestor::*[@role='row' or contains(@class,'row')][1]").locator(
        'button[data-component-id*="runnamecellrenderer"]').first.click()


def test_the_experiment_opens_on_its_runs_with_its_description(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    page.goto(experiment_url(ui, store["experiment_id"]))
    unfold_sweep(page)
    for name in store["runs"]:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/experiments/{store['experiment_id']}/runs\?workflowType=machine_learning"))
    expect(page.get_by_text("pictures of what the filters of a convolutional network respond to")).to_be_visible()
    page.screenshot(path=shots / "ui-runs.png")
    assert unexpected_errors(page_errors) == []


def test_a_run_shows_each_filters_ascent_with_a_step_slider(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    run_id = store["runs"]["step_size=0.1"]
    # the address the run printed, on the port this test's `mlflow ui` took (the printed command's is 5000)
    [printed] = [url for url in store["printed_urls"] if f"/runs/{run_id}/" in url]
    page.goto(printed.replace("http://127.0.0.1:5000", ui, 1))
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}/model-metrics"))  # the run's own page, not a redirect
    page.get_by_placeholder("Search metric charts").fill("f0001")  # as a user finds one filter's card
    card = chart_card(page, "block2_conv1/f0001")
    slider = card.get_by_role("slider")
    expect(slider).to_have_attribute("aria-valuemin", "0")
    expect(slider).to_have_attribute("aria-valuemax", str(ITERS))
    wait_until(lambda: images_loaded(card) and image_runs(card) == [run_id], what="the run's picture")
    set_step(card, ITERS)
    wait_until(lambda: images_loaded(card) and image_steps(card) == [ITERS], what="the final picture")
    hide_run_params(page, card)
    card.scroll_into_view_if_needed()
    wait_until(lambda: images_loaded(card), what="the picture, uncaptioned")
    page.screenshot(path=shots / "ui-run-images.png")
    assert unexpected_errors(page_errors) == []


def test_the_chart_view_compares_the_sweeps_runs_pictures_and_curves(ui, store, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    page = ui_page
    page.goto(chart_view_url(ui, store["experiment_id"]))
    unfold_sweep(page)
    search = page.get_by_placeholder("Search metric charts")
    search.fill("activation/block2_conv1/f0001")  # filter 0 of block2_conv1 never fires: a flat curve
    curves = chart_card(page, "activation/block2_conv1/f0001")
    for name in store["runs"]:
        expect(curves).to_contain_text(name)  # the legend: both runs' curves
    search.fill("conv1/f0001")
    pictures = chart_card(page, "block2_conv1/f0001")
    for name in store["runs"]:
        expect(pictures).to_contain_text(name)
    wait_until(lambda: images_loaded(pictures) and sorted(image_runs(pictures)) == sorted(store["runs"].values()),
               what="both runs' pictures")
    set_step(pictures, ITERS)
    wait_until(lambda: images_loaded(pictures) and image_steps(pictures) == [ITERS, ITERS],
               what="both final pictures")
    hide_run_params(page, pictures)
    page.set_viewport_size({"width": 1400, "height": 1300})
    pictures.scroll_into_view_if_needed()
    wait_until(lambda: images_loaded(pictures), what="both pictures, uncaptioned")
    curves.evaluate("card => card.scrollIntoView({block: 'start'})")
    page.screenshot(path=shots / "ui-compare.png")
    assert unexpected_errors(page_errors) == []
