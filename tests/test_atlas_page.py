"""The atlas web site, as a user sees it: opened from disk (file://) in headless Chromium.

A small synthetic atlas (no TensorFlow, no MLflow server): two layers, one still filling in, a dead
filter, a missing figure. Screenshots go to a temporary folder, or to $FILTERVIZ_ATLAS_SCREENSHOTS.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterviz.atlas.page import page_names, write_site
from mlflow_ui import unexpected_errors

FIGURES = {"final_activation": "mean activation of the filter on its picture (higher: stronger)",
           "robustness": "activation kept under small transforms (higher: sturdier)",
           "hf_fraction": "share of high-frequency energy (lower: smoother)"}
LAYERS = {"block1_conv1": (5, 5), "block2_conv1": (7, 4)}  # name: (n_filters, done)
DEAD = ("block1_conv1", 2)
MISSING = ("block1_conv1", 3, "robustness")  # a figure that could not be measured (NaN)


def command(layer: str, i: int) -> str:
    # quotes and a "<": the page must show it as typed, not as markup
    return f"python -m filterviz model=vgg16 layer={layer} filters={i} iters=16 'title=\"{layer}\" <{i}>'"


def synthetic_manifest(site: Path) -> dict:
    rng = np.random.default_rng(0)
    layers = []
    for name, (n_filters, done) in LAYERS.items():
        filters = []
        for i in range(done):
            picture = f"pictures/{name}/filter_{i:04d}.png"
            (site / picture).parent.mkdir(parents=True, exist_ok=True)
            gradient = np.linspace(0, 255, 32)[None, :, None] * rng.random(3) + rng.integers(0, 40, (32, 32, 3))
            Image.fromarray(gradient.clip(0, 255).astype(np.uint8)).save(site / picture)
            dead = (name, i) == DEAD
            figures = {"final_activation": 0.0 if dead else float(rng.random() * 5),
                       "robustness": float(rng.random()), "hf_fraction": float(rng.random() * 0.3)}
            if (name, i) == MISSING[:2]:
                figures[MISSING[2]] = float("nan")
            curve = (np.cumsum(rng.random(16)) * (0 if dead else 1)).tolist()
            curve[3] = float("nan")  # a step that did not run
            filters.append({"filter": i, "picture": picture, "dead": dead, "figures": figures, "curve": curve,
                            "run_id": f"run{name}{i}", "run_url": f"http://127.0.0.1:5000/#/runs/{name}-{i}",
                            "command": command(name, i)})
        layers.append({"name": name, "n_filters": n_filters, "done": done, "filters": filters})
    return {"title": "vgg16 atlas: best preset, 32 px, 16 iterations", "model": "vgg16",
            "settings": {"iters": 16, "input_size": 32, "preset": "best"},
            "run_id": "parent123", "run_url": "http://127.0.0.1:5000/#/runs/parent123",
            "figures": FIGURES, "layers": layers}


@pytest.fixture
def atlas(tmp_path) -> tuple[dict, Path]:
    """The manifest as write_site read it (NaN as None), and the index.html it wrote."""
    site = tmp_path / "site"
    index = write_site(synthetic_manifest(site), site)
    return json.loads((site / "atlas.json").read_text()), index


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("FILTERVIZ_ATLAS_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def expected_order(filters: list[dict], figure: str, descending: bool) -> list[int]:
    """Filter numbers sorted by a figure; missing values last either way, ties by filter number."""
    def key(f):
        value = f["figures"][figure]
        return (value is None, 0 if value is None else (-value if descending else value), f["filter"])
    return [f["filter"] for f in sorted(filters, key=key)]


def fmt(value) -> str:
    """A figure as the pages show it: 3 significant digits, a dash where it is missing."""
    return "–" if value is None else f"{value:.3g}"


# ---------------------------------------------------------------------------- without a browser


def test_layer_names_become_safe_unique_file_names_and_the_pages_escape_text(tmp_path):
    names = ["conv/1:a b<x>", "conv 1 a b x", "Conv_1_A_B_X", "..", "block1_conv1"]
    assert page_names(names) == ["conv_1_a_b_x.html", "conv_1_a_b_x_2.html", "Conv_1_A_B_X_3.html",
                                 "layer.html", "block1_conv1.html"]
    evil = "python -m filterviz 'title=</script><b>bold</b>' & more"
    manifest = {"title": "a <i>title</i>", "model": "m", "settings": {}, "run_id": None, "run_url": None,
                "figures": {"f": "a figure"},
                "layers": [{"name": "conv/1:a b<x>", "n_filters": 1, "done": 1, "filters": [
                    {"filter": 0, "picture": "pictures/conv 1/filter_0000.png", "dead": False,
                     "figures": {"f": float("nan")}, "curve": [1.0, float("inf")], "run_id": None,
                     "run_url": None, "command": evil}]}]}
    index = write_site(manifest, tmp_path)

    layer_page = tmp_path / "layers" / "conv_1_a_b_x.html"
    html = layer_page.read_text()
    assert "<b>bold" not in html and "<i>" not in html
    assert 'src="../pictures/conv%201/filter_0000.png"' in html
    embedded = re.search(r'<script type="application/json" id="layer-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(embedded)["filters"][0]["command"] == evil
    index_html = index.read_text()
    assert 'href="layers/conv_1_a_b_x.html"' in index_html and "conv/1:a b&lt;x&gt;" in index_html
    assert "a &lt;i&gt;title&lt;/i&gt;" in index_html
    # atlas.json is strict JSON: NaN and infinity are null
    saved = json.loads((tmp_path / "atlas.json").read_text(), parse_constant=pytest.fail)
    assert saved["layers"][0]["filters"][0]["figures"] == {"f": None}
    assert saved["layers"][0]["filters"][0]["curve"] == [1.0, None]


# ---------------------------------------------------------------------------- in Chromium


def loaded_images(page) -> int:
    """Scroll every visible image into view (they load lazily), wait until each one is done and
    check that it decoded (a missing file does not); returns how many there are."""
    images = page.locator("img:visible")
    count = images.count()
    for i in range(count):
        images.nth(i).scroll_into_view_if_needed()
    visible = "[...document.images].filter(i => i.checkVisibility())"
    page.wait_for_function(f"() => {visible}.every(i => i.complete)")
    assert page.evaluate(f"() => {visible}.filter(i => i.naturalWidth === 0).map(i => i.src)") == []
    return count


def requested_urls(page) -> list[str]:
    """Every URL the page asks for from now on (filled as it goes)."""
    urls = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def tile_order(page) -> list[int]:
    return [int(n) for n in page.locator("#grid .tile").evaluate_all("ts => ts.map(t => t.dataset.filter)")]


def test_the_index_lists_every_layer_with_its_counts_figures_and_pictures(atlas, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    manifest, index = atlas
    page = ui_page
    requests = requested_urls(page)
    page.goto(index.as_uri())
    expect(page.get_by_role("heading", name=manifest["title"])).to_be_visible()
    expect(page.get_by_role("link", name="MLflow run parent123")).to_have_attribute("href", manifest["run_url"])
    expect(page.locator(".settings")).to_contain_text("input_size")

    rows = page.locator("table.layers tbody tr")
    expect(rows).to_have_count(len(manifest["layers"]))
    for row, layer in zip(rows.all(), manifest["layers"]):
        cells = row.locator("th, td")
        live = [f for f in layer["filters"] if not f["dead"]]
        expect(cells.nth(0)).to_have_text(layer["name"])
        complete = layer["done"] == layer["n_filters"]
        expect(cells.nth(1)).to_have_text(str(layer["n_filters"]) if complete
                                          else f"{layer['done']} of {layer['n_filters']}")
        expect(cells.nth(2)).to_have_text(str(sum(f["dead"] for f in layer["filters"])))
        for column, figure in enumerate(sorted(FIGURES), start=3):
            known = [f["figures"][figure] for f in live if f["figures"][figure] is not None]
            expect(cells.nth(column)).to_have_text(fmt(np.mean(known)))
        expect(row.locator(".strip img")).to_have_count(min(12, len(layer["filters"])))

    assert loaded_images(page) == sum(min(12, len(layer["filters"])) for layer in manifest["layers"])
    page.screenshot(path=shots / "atlas-index.png", full_page=True)

    page.locator('tr[data-layer="block2_conv1"]').get_by_role("link", name="filter 1", exact=True).click()
    expect(page.get_by_role("heading", name="block2_conv1", exact=True)).to_be_visible()
    expect(page.locator(".counts")).to_contain_text("4 of 7 filters")
    expect(page.locator("#detail h2")).to_have_text("block2_conv1 · filter 1")  # a thumbnail opens its filter
    page.get_by_role("link", name=f"← {manifest['title']}").click()
    expect(page.locator("table.layers")).to_be_visible()
    assert [url for url in requests if not url.startswith("file://")] == []  # opens with no server, no network
    assert unexpected_errors(page_errors) == []


def test_a_layer_page_sorts_its_filters_and_details_one(atlas, ui_page, page_errors, shots):
    from playwright.sync_api import expect

    manifest, index = atlas
    layer = manifest["layers"][0]
    page = ui_page
    page.goto(index.as_uri())
    page.get_by_role("link", name=layer["name"], exact=True).click()

    assert tile_order(page) == [f["filter"] for f in layer["filters"]]
    assert loaded_images(page) == len(layer["filters"])
    dead = page.locator(f"#tile-{DEAD[1]}")
    expect(dead).to_have_class(re.compile(r"\bdead\b"))
    expect(dead.locator(".badge")).to_have_text("dead")
    expect(page.locator(".tile .badge")).to_have_count(1)

    sort = page.locator("#sort")
    for figure in ("final_activation", MISSING[2]):  # the second one has a missing value
        for descending in (True, False):
            sort.select_option(f"{figure}:{'desc' if descending else 'asc'}")
            assert tile_order(page) == expected_order(layer["filters"], figure, descending), (figure, descending)
    sort.select_option("filter")
    assert tile_order(page) == [f["filter"] for f in layer["filters"]]

    sort.select_option("final_activation:desc")
    order = expected_order(layer["filters"], "final_activation", descending=True)
    chosen, following = (next(f for f in layer["filters"] if f["filter"] == n) for n in order[:2])
    tile = page.locator(f"#tile-{chosen['filter']}")
    expect(tile).to_have_attribute("data-value", fmt(chosen["figures"]["final_activation"]))  # shown on the tile
    tile.click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(detail.get_by_role("heading")).to_have_text(f"{layer['name']} · filter {chosen['filter']}")
    expect(detail.locator("code")).to_have_text(chosen["command"])
    assert detail.locator("code").text_content() == chosen["command"]  # to_have_text trims; a copy must not
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    detail.get_by_role("button", name="copy").click()
    expect(detail.get_by_role("button", name="copied")).to_be_visible()
    assert page.evaluate("() => navigator.clipboard.readText()") == chosen["command"]
    expect(detail.get_by_role("link", name="MLflow run")).to_have_attribute("href", chosen["run_url"])
    expect(detail.locator("#detail-figures tr")).to_have_text(
        [f"{name}{fmt(chosen['figures'][name])}" for name in sorted(FIGURES)])
    expect(detail.locator("#detail-curve path.curve")).to_have_attribute("d", re.compile(r"^M[^M]+M[^M]+$"))
    page.wait_for_function("() => document.getElementById('detail-picture').naturalWidth > 0")
    page.screenshot(path=shots / "atlas-layer.png")

    page.keyboard.press("ArrowRight")  # the next filter in the order shown
    expect(detail.get_by_role("heading")).to_have_text(f"{layer['name']} · filter {following['filter']}")
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    assert unexpected_errors(page_errors) == []


# ------------------------------------------------------------------- a real atlas with examples


def test_an_atlas_with_dataset_examples_shows_each_filter_beside_them_and_sorts_by_the_new_figure(
        tmp_path, monkeypatch, ui_page, page_errors, shots):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect

    import filterviz
    from experiments.scenes import make_scenes
    from test_exemplars_pass import small_net

    monkeypatch.chdir(tmp_path)
    make_scenes(tmp_path / "scenes", 30)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made = filterviz.atlas(small_net(), layers=["conv", "conv2"], per_layer=4, experiment="seed", iters=8,
                           input_size=32, tracking=uri, exemplars={"data": str(tmp_path / "scenes"), "k": 4})
    assert not made.failed
    layer = made.layers[1]
    for f in layer["filters"]:
        assert (made.page.parent / f["examples"]).is_file()
        assert f["figures"]["vs_examples"] > 0
    # the pass is recorded once, under the atlas, and a second command reads it back
    client = MlflowClient(uri)
    [examples_run] = [r for r in client.search_runs([client.get_run(made.run_id).info.experiment_id])
                      if "filterviz.exemplars" in r.data.tags]
    assert examples_run.data.tags["mlflow.parentRunId"] == made.run_id and examples_run.info.status == "FINISHED"

    page = ui_page
    page.goto(made.page.as_uri())
    page.get_by_role("link", name=layer["name"], exact=True).click()
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every((i) => i.complete && i.naturalWidth > 0)")
    assert page.locator(".tile img.examples").count() == len(layer["filters"])
    page.locator("#sort").select_option("vs_examples:asc")
    assert tile_order(page) == expected_order(layer["filters"], "vs_examples", descending=False)
    first = expected_order(layer["filters"], "vs_examples", descending=False)[0]
    page.locator(f"#tile-{first}").click()
    expect(page.locator("#detail-examples-figure")).to_be_visible()
    page.wait_for_function("() => document.getElementById('detail-examples').naturalWidth > 0")
    page.screenshot(path=shots / "atlas-layer-examples.png")
    assert unexpected_errors(page_errors) == []
