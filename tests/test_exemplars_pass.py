"""The dataset-examples pass as users run it: from Python and from the command line, recorded in
MLflow, resumed after SIGKILL, sharded over joblib, and every bad input one line."""

import json
import math
import os
import signal
import subprocess
import sys
from fractions import Fraction

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import filterviz
from experiments.scenes import make_scenes
from filterviz.core.exemplars import dataset, image_files
from filterviz.errors import ConfigError

SIZE = 32


def small_net():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    return keras.Model(inputs, keras.layers.Conv2D(5, 3, name="conv2")(x))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Generated scenes, plus every awkward kind of file a real folder holds."""
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, 36)
    pixels = np.asarray(Image.open(folder / "scene00000.jpg"))
    odd = folder / "odd"
    odd.mkdir()
    Image.fromarray(pixels).convert("L").save(odd / "grey.png")
    Image.fromarray(pixels).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(odd / "deep.png")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(odd / "alpha.png")
    Image.fromarray(pixels).resize((4000, 3000)).save(odd / "huge.jpg")
    (odd / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_the_pass_finds_the_brute_force_top_images_and_quantiles_traces_and_records_them(scenes, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints, the saved model and outputs go here
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    model = small_net()
    found = filterviz.exemplars(model, data=scenes, k=3, input_size=SIZE, preprocess=False, batch_size=8,
                                quantiles=[0.9, 0.5], tracking=store)
    files = image_files(scenes)
    assert found.skipped == ["odd/broken.jpg"] and found.read == len(files) - 1
    readable = [i for i, f in enumerate(files) if f.name != "broken.jpg"]
    images = np.concatenate([b for b, _ in dataset([files[i] for i in readable], readable, SIZE, 3, 64)])
    for layer in ("conv", "depthwise", "conv2"):
        maps = keras.Model(model.inputs, model.get_layer(layer).output)(images).numpy()
        n, h, w, c = maps.shape
        best = maps.reshape(n, h * w, c).max(axis=1)
        top = found.top(layer)
        for channel in range(c):
            ranked = sorted(range(n), key=lambda i: (-best[i, channel], readable[i]))
            assert [readable[i] for i in ranked[:3]] == list(top["images"][channel]), (layer, channel)
            np.testing.assert_allclose(top["values"][channel], best[ranked[:3], channel], rtol=1e-5)
            rising = sorted(range(n), key=lambda i: (best[i, channel], readable[i]))
            for q in (0.9, 0.5):  # the image at that rank from the bottom, not an interpolation
                rank = math.ceil(Fraction(str(q)) * n)
                assert top[f"q{q:g}/images"][channel, 0] == readable[rising[rank - 1]], (layer, q)
        # every example says where it comes from, and its activation is the unit's there
        for row in found.rows(layer, 1):
            assert (scenes / row["file"]).is_file()
            at = readable.index(row["image"])
            assert row["activation"] == pytest.approx(maps[at, row["y"], row["x"], 1], rel=1e-4, abs=1e-6)
        strip = found.strip(layer, 1)
        assert strip.shape[0] == 64 and strip.shape[1] > 64 * 5 and strip.std() > 0.01  # 3 top + 2 quantiles
    assert len(found.rows("conv2", 0)) == 5 and {r["kind"] for r in found.rows("conv2", 0)} == {"top", "q0.9", "q0.5"}

    client = MlflowClient(store)
    run = client.get_run(found.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["images_read"] == len(files) - 1 and run.data.metrics["images_skipped"] == 1
    logged = {a.path for a in client.list_artifacts(found.run_id)}
    assert {"examples.json", "examples"} <= logged
    assert {a.path for a in client.list_artifacts(found.run_id, "examples/conv2")} >= {"examples/conv2/f0004.jpg"}
    logged_table = json.loads(open(client.download_artifacts(found.run_id, "examples.json", str(tmp_path))).read())
    assert [row[logged_table["columns"].index("file")] for row in logged_table["data"]] == found.table["file"]

    again = filterviz.exemplars(model, data=scenes, k=3, input_size=SIZE, preprocess=False, batch_size=8,
                                quantiles=[0.9, 0.5], tracking=store)
    assert again.run_id == found.run_id, "a finished pass is read back, not redone"
    np.testing.assert_array_equal(again.top("conv")["images"], found.top("conv")["images"])
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.parametrize("settings, says", [
    ({"data": "nowhere"}, "no such folder"),
    ({"layers": "nope"}, "layers: 'nope' matches no convolution of this model"),
    ({"k": 0}, "k=0: at least 1 top image per filter"),
    ({"quantiles": [1.5]}, "quantiles are fractions from 0 to 1"),
])
def test_bad_input_is_one_line(settings, says, scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = {"data": scenes, "input_size": SIZE, "tracking": "off", **settings}
    with pytest.raises(ConfigError, match=says):
        filterviz.exemplars(small_net(), **given)


def command(*overrides, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "filterviz.exemplars", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def arrays(results):
    out = {}
    for path in sorted((results / "examples" / "arrays").glob("*.npz")):
        with np.load(path) as saved:
            out.update({f"{path.stem}/{k}": saved[k] for k in saved.files})
    return out


def signalled_at_first_progress(common, signum, cwd):
    """The pass (every batch checkpointed) sent `signum` at its first progress line: (process, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "filterviz.exemplars", *common, "checkpoint_seconds=0"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "examples: images" in line:
            proc.send_signal(signum)
            break
    return proc, proc.communicate(timeout=60)[1]


def test_a_sigkilled_pass_resumes_to_the_same_result_and_shards_merge_to_it(tmp_path):
    folder = tmp_path / "images"
    make_scenes(folder, 240, seed=1)
    small_net().save(tmp_path / "small.keras")
    common = [f"data={folder}", "model=file", f"model.path={tmp_path / 'small.keras'}", f"input_size={SIZE}",
              "batch_size=8", "preprocess=false", "k=4", f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db"]
    killed, _ = signalled_at_first_progress(common, signal.SIGKILL, tmp_path)  # killed outright
    assert killed.returncode == -signal.SIGKILL

    # then stopped as a user stops it: one line saying how to go on
    stopped, err = signalled_at_first_progress(common, signal.SIGTERM, tmp_path)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == ("stopped by SIGTERM: the images read so far are checkpointed; "
                                            "the same command resumes the pass"), err

    resumed = command(*common, "checkpoint_seconds=0", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [said] = [line for line in resumed.stdout.splitlines() if line.startswith("resuming from the checkpoint")]
    held = int(said.split(": ")[1].split()[0])
    assert 0 < held < 240, said
    [results] = [r for r in tmp_path.glob("outputs/exemplars/*/*/results") if (r / "examples").is_dir()]  # not the stopped ones'
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = sorted(r.info.status for r in client.search_runs(client.search_experiments()[0].experiment_id))
    assert runs == ["FAILED", "FINISHED", "KILLED"], "the killed pass's run is ended, the stopped one killed, the last finished"

    sharded = command(*common, "shards=2", "hydra/launcher=joblib", cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert "the 2 shards merged" in sharded.stdout
    merged = next(tmp_path.glob("multirun/exemplars/*/*/results"))
    whole, parts = arrays(results), arrays(merged)
    assert whole.keys() == parts.keys() and len(whole) == 3 * 16
    for name in whole:
        np.testing.assert_array_equal(parts[name], whole[name], err_msg=name)

    wrong = command(*common, "layers=[conv,nope]", cwd=tmp_path)
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines() == [
        wrong.stderr.strip().splitlines()[-1]] and "layers: 'nope' matches no" in wrong.stderr


def test_a_run_with_exemplars_data_puts_its_filters_examples_beside_its_pictures(scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    made = filterviz.render(small_net(), layer="conv2", filters="1:3", iters=6, input_size=SIZE, tracking=store,
                            exemplars={"data": str(scenes), "k": 3, "batch_size": 8}, output_dir=tmp_path / "out")
    examples = made.results_dir / "examples"
    assert sorted(p.name for p in (examples / "conv2").iterdir()) == ["f0001.jpg", "f0002.jpg"]
    rows = json.loads((made.results_dir / "examples.json").read_text())
    assert set(rows["filter"]) == {1, 2} and set(rows["layer"]) == {"conv2"}
    with np.load(examples / "arrays" / "conv2.npz") as saved:
        best = saved["values"][:, 0]
    for f in (1, 2):  # the picture's peak over the best photograph's, as logged
        name = f"conv2/f{f:04d}"
        assert made.figures[f"vs_examples/{name}"] == pytest.approx(made.figures[f"peak_activation/{name}"] / best[f])
    logged = {a.path for a in MlflowClient(store).list_artifacts(made.run_id)}
    assert {"examples", "examples.json", "pictures"} <= logged
