"""The atlas as a user runs it: `python -m filterviz.atlas ...` on a small saved conv model, end
to end into a fresh store; killed with SIGKILL mid-way and run again, it finishes with the
same images as an atlas that was never interrupted."""

import json
import os
import signal
import time

import numpy as np
import pytest

from filterviz.atlas import plan
from filterviz.atlas.__main__ import ATLAS
from filterviz.core.models import ConvLayer
from filterviz.errors import ConfigError
from atlases import LAYERS, atlas_args, pictures, runs_by_kind, site_of, start_atlas, store
from mlflow_ui import unexpected_errors


def test_the_atlas_renders_every_filter_of_every_conv_layer_under_one_parent(uninterrupted):
    cwd, out, err = uninterrupted
    [parent], children = runs_by_kind(cwd)
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("small atlas")
    assert len(children) == 3 + 4 + 2  # 2 filters a job
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for c in children)
    assert out.count("atlas: ") == len(children)  # a progress line per job
    # jobs stream no per-step series or snapshots (the page shows each picture and curve from the files)
    assert not [k for c in children for k in c.data.metrics if "/f0" in k]  # e.g. activation/conv_a/f0000
    assert {"images.npy", "filters.json", "activations.npy"} <= {a.path for a in store(cwd).list_artifacts(
        children[0].info.run_id)}
    assert "atlas: conv_c f2-3 done · 18/18 filters" in out and "Traceback" not in err
    progress = [line for line in out.splitlines() if line.startswith("atlas: ")]
    # the first job's pace includes the start-up; from the second on the ETA is a time
    assert "ETA after the next job" in progress[0] and all(" ETA 0:" in line for line in progress[1:])
    assert progress[-1].endswith("ETA 0:00:00")

    site = site_of(out)
    manifest = json.loads((site / "atlas.json").read_text())
    assert [(layer["name"], layer["n_filters"], [f["filter"] for f in layer["filters"]])
            for layer in manifest["layers"]] == [(n, k, list(range(k))) for n, k in LAYERS.items()]
    assert len(pictures(site)) == 18 and (site / "index.html").is_file()
    some = manifest["layers"][1]["filters"][5]
    assert some["command"].startswith("python -m filterviz xla=false model=file") and some["command"].endswith(
        "layer=conv_b filters=5")
    logged = {a.path for a in store(cwd).list_artifacts(parent.info.run_id, "atlas")}
    assert "atlas/index.html" in logged


def test_a_sigkilled_atlas_resumes_to_the_same_images(small_model, uninterrupted, tmp_path):
    args = atlas_args(small_model)
    proc = start_atlas(args, tmp_path)
    for line in proc.stdout:  # the atlas's first line comes once its store exists: opening it earlier races
        if line.startswith("atlas "):
            break
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        _, children = runs_by_kind(tmp_path)
        if sum(c.info.status == "FINISHED" for c in children) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    _, children = runs_by_kind(tmp_path)
    assert 3 <= sum(c.info.status == "FINISHED" for c in children) < 9, "killed mid-way"

    again = start_atlas(args, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "job(s) left" in out
    [parent], children = runs_by_kind(tmp_path)
    assert parent.info.status == "FINISHED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 9 and len({c.data.tags["filterviz.filters"] + c.data.tags["filterviz.layer"]
                                       for c in finished}) == 9, "no job done twice"
    whole = pictures(site_of(uninterrupted[1]))
    resumed = pictures(site_of(out))
    assert resumed.keys() == whole.keys() and all(resumed[k] == whole[k] for k in whole)
    # and bit for bit, the raw images of every job
    client_a, client_b = store(uninterrupted[0]), store(tmp_path)
    _, jobs_a = runs_by_kind(uninterrupted[0])
    raw_a = {(r.data.tags["filterviz.layer"], r.data.tags["filterviz.filters"]): r.info.run_id for r in jobs_a}
    for run in finished:
        key = (run.data.tags["filterviz.layer"], run.data.tags["filterviz.filters"])
        a = np.load(client_a.download_artifacts(raw_a[key], "images.npy", str(tmp_path / "a" / run.info.run_id)))
        b = np.load(client_b.download_artifacts(run.info.run_id, "images.npy", str(tmp_path / "b" / run.info.run_id)))
        assert np.array_equal(a, b), key


def test_the_atlas_page_opens_from_disk_with_every_picture_and_command(uninterrupted, ui_page, page_errors):
    """The page of the real atlas above, in headless Chromium (the page's own behaviour, sorting
    and the detail view, is specified on a synthetic atlas in test_atlas_page.py)."""
    from playwright.sync_api import expect

    site = site_of(uninterrupted[1])
    manifest = json.loads((site / "atlas.json").read_text())
    page = ui_page
    page.goto((site / "index.html").as_uri())
    expect(page.locator("table.layers tbody tr")).to_have_count(len(LAYERS))
    for layer in manifest["layers"]:
        page.goto((site / "index.html").as_uri())
        page.get_by_role("link", name=layer["name"], exact=True).click()
        tiles = page.locator("#grid .tile img")
        expect(tiles).to_have_count(LAYERS[layer["name"]])
        for i in range(tiles.count()):
            tiles.nth(i).scroll_into_view_if_needed()
        shown = "[...document.images].filter(i => i.checkVisibility())"  # not the closed detail's picture
        page.wait_for_function(f"() => {shown}.every(i => i.complete)")
        assert page.evaluate(f"() => {shown}.filter(i => i.naturalWidth === 0).length") == 0
        page.locator("#grid .tile").last.click()
        expect(page.locator("#detail-command")).to_have_text(layer["filters"][-1]["command"])
    assert unexpected_errors(page_errors) == []


def test_a_wrong_layer_pattern_is_one_line_naming_the_layers(small_model, tmp_path):
    proc = start_atlas([*atlas_args(small_model), "atlas.layers=conv_z*"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: atlas.layers: 'conv_z*' matches no convolution of this model; "
                                            "its convolutions are conv_a, conv_b, conv_c (any other layer with "
                                            "channels can be named too)")


LAYER_LIST = [ConvLayer("block1_conv1", 64, 1.0), ConvLayer("block1_conv2", 64, 20.0),
              ConvLayer("block1_pool", 64, 20.0, convolution=False),
              ConvLayer("block2_conv1", 128, 30.0), ConvLayer("block5_conv1", 512, 160.0)]


def test_layers_are_chosen_by_name_or_pattern_and_a_wrong_one_says_which_exist():
    assert [layer.name for layer in plan.select_layers(LAYER_LIST, "block1_*")] == ["block1_conv1", "block1_conv2"]
    assert [layer.name for layer in plan.select_layers(LAYER_LIST, ["block5_conv1", "block1_conv1"])] == [
        "block1_conv1", "block5_conv1"]
    assert len(plan.select_layers(LAYER_LIST, "all")) == 4, "every convolution, no other layer"
    assert [layer.name for layer in plan.select_layers(LAYER_LIST, ["block1_pool", "block2_*"])] == [
        "block1_pool", "block2_conv1"], "any layer with channels by name"
    with pytest.raises(ConfigError, match="'block9_\\*' matches no convolution of this model; its convolutions are "
                                          "block1_conv1, block1_conv2"):
        plan.select_layers(LAYER_LIST, "block9_*")


def test_jobs_cover_the_filters_not_done_and_cheap_layers_get_bigger_jobs():
    convolutions = [layer for layer in LAYER_LIST if layer.convolution]
    jobs = plan.plan_jobs(convolutions, {"block1_conv2": set(range(10, 64)), "block5_conv1": {0, 1, 2}}, 16)
    covered = {(j.layer, f) for j in jobs for f in j.filters}
    expected = {(layer.name, f) for layer in convolutions for f in range(layer.filters)} - {
        ("block1_conv2", f) for f in range(10, 64)} - {("block5_conv1", f) for f in (0, 1, 2)}
    assert covered == expected and len(covered) == sum(len(j.filters) for j in jobs)
    first = {}
    for job in jobs:
        first.setdefault(job.layer, job)
    assert len(first["block1_conv1"].filters) == 64 and first["block5_conv1"].filters == tuple(range(3, 67))
    assert len(first["block2_conv1"].filters) == 128  # the whole layer: 21 batches of it cost 4 of block5
    assert jobs[0].overrides() == ["layer=block1_conv1", "filters=0:64"]
    assert [len(j.filters) for j in plan.plan_jobs(LAYER_LIST[:1], {}, 16, chunk=24)] == [24, 24, 16]


def test_a_setting_that_changes_pictures_makes_another_atlas():
    same = {"iters": "64", "seed": "0"}
    assert plan.identity(same) == plan.identity(dict(reversed(same.items())))
    assert plan.identity(same) != plan.identity({**same, "seed": "1"})


# what python -m filterviz.atlas adds to every job's settings
ATLAS_JOB = [a for a in ATLAS if "=" in a and not a.startswith(("hydra", "+"))]


def test_in_process_jobs_leave_no_traced_step_behind(small_model, tmp_path):
    """An in-process atlas runs hundreds of jobs in one process: each job's traced step must go
    when the job does (Keras' apply_gradients kept every one alive, ~10 MiB per VGG16 job). The
    traced graphs are counted, not the resident memory: this small model's step is a fraction of a
    MiB, which the allocator's own noise over a few jobs would hide."""
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    from conftest import make_cfg
    from filterviz import job

    def one_job(k: int) -> None:  # the default recipe (Adam, Fourier, transforms), as an atlas job runs it
        job.run(make_cfg("model=file", f"model.path={small_model}", "model.weights=null", "tracking=off",
                         "iters=5", "input_size=32", "layer=conv_b", f"filters={k % 8}", *ATLAS_JOB),
                tmp_path / str(k))
        gc.collect()

    def graphs() -> int:
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    one_job(0)  # TensorFlow's one-time graphs
    before = graphs()
    for k in range(1, 4):
        one_job(k)
    assert graphs() <= before, f"{graphs() - before} traced graphs outlived their jobs"


def test_a_wider_atlas_extends_the_same_one_and_a_picture_setting_starts_another(small_model, tmp_path):
    """atlas.per_layer and atlas.layers choose what the atlas holds without changing its pictures:
    naming one more layer resumes the same atlas and runs only the new layer's jobs. A setting that
    changes the pictures (step_size) starts a new atlas beside it."""
    def atlas(*more):
        proc = start_atlas([*atlas_args(small_model), "atlas.per_layer=2", *more], tmp_path)
        out, err = proc.communicate(timeout=280)
        assert proc.returncode == 0, err
        [said] = [line for line in out.splitlines() if line.startswith("atlas ") and " of small: " in line]
        site = site_of(out)
        manifest = json.loads((site / "atlas.json").read_text())
        return said.split()[1], said, {l["name"]: [f["filter"] for f in l["filters"]] for l in manifest["layers"]}, site

    first_id, said, held, _ = atlas("atlas.layers=conv_a")
    assert held == {"conv_a": [0, 1]} and "1 layer(s), 2 filters in 1 job(s)" in said
    wider_id, said, held, site = atlas("atlas.layers=[conv_a,conv_c]")
    assert wider_id == first_id and "2 layer(s), 4 filters in 1 job(s) left (2 filters; the others are done)" in said
    assert held == {"conv_a": [0, 1], "conv_c": [0, 1]}
    other_id, said, held, other_site = atlas("atlas.layers=[conv_a,conv_c]", "step_size=3")
    assert other_id != first_id and "4 filters in 2 job(s);" in said and held == {"conv_a": [0, 1], "conv_c": [0, 1]}

    parents, children = runs_by_kind(tmp_path)
    assert len(parents) == 2 and len(children) == 4, "each job ran once in its own atlas"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    assert pictures(site).keys() == pictures(other_site).keys()
    # (a filter that never fires stays the flat start in both: not every picture can differ)
    assert sum(pictures(site)[k] != pictures(other_site)[k] for k in pictures(site)) >= 2, "another atlas, other pictures"


def test_the_atlas_of_a_mixed_model_covers_every_convolution_kind(tmp_path):
    from test_models import CONVOLUTIONS, mixed_model

    mixed_model().save(tmp_path / "mixed.keras")
    proc = start_atlas(["model=file", f"model.path={tmp_path / 'mixed.keras'}", "model.weights=null",
                        "experiment=seed", "iters=4", "input_size=24", "atlas.per_layer=2"], tmp_path)
    out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err
    manifest = json.loads((site_of(out) / "atlas.json").read_text())
    assert [(layer["name"], [f["filter"] for f in layer["filters"]]) for layer in manifest["layers"]] == [
        (name, [0, 1]) for name in CONVOLUTIONS]
    assert len(pictures(site_of(out))) == 2 * len(CONVOLUTIONS)
