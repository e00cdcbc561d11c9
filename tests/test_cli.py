"""The app as a user runs it: `python -m filterviz ...` in a subprocess, against a temp store.

Bad settings beyond one per place they are caught go through `job.run` in this process: the
command reports every ConfigError from it the same way, as one line and exit status 1."""

import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import GPUS, ROOT, WEIGHTS, make_cfg, needs_weights, run_cli, this_cpu

pytestmark = needs_weights
ITERS = 12
FILTERS = [1, 2, 3]
CHARTED = 2  # filters charted one by one; the third is only in the table


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One real run into the default store (./mlruns under the working directory)."""
    cwd = tmp_path_factory.mktemp("project")
    proc = run_cli("layer=block2_conv1", f"iters={ITERS}", "filters=[1,2,3]", "input_size=48",
                   f"model.weights={WEIGHTS}", f"tracking.filter_series={CHARTED}", cwd=cwd,
                   env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    assert len(runs) == 1
    return cwd, uri, client, runs[0], proc


def test_run_finishes_with_an_activation_series_per_charted_filter_and_the_means(recorded):
    _, _, client, run, _ = recorded
    assert run.info.status == "FINISHED"
    charted = [f"block2_conv1/f{f:04d}" for f in FILTERS[:CHARTED]]
    for key in [f"activation/{name}" for name in charted] + ["activation/mean", "objective/mean"]:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(ITERS)), key
    for figure in ("final_activation", "robustness", "hf_fraction", "specificity"):
        assert {k for k in run.data.metrics if k.startswith(f"{figure}/")} == {f"{figure}/{n}" for n in charted}
    assert 0 <= run.data.metrics["quality/specificity"] <= 1
    # the run's own figures: its time and pace, and the quality summary over its filters
    metrics = run.data.metrics
    assert metrics["seconds"] > 0
    assert metrics["filter_iters_per_second"] == pytest.approx(len(FILTERS) * ITERS / metrics["seconds"], rel=1e-6)
    assert metrics["quality/dead_filters"] == 0  # these three fire (the table's "dead" column, below)
    assert not [k for k in run.data.metrics if k.endswith("f0003")]  # past filter_series: the table only
    mean = sorted(client.get_metric_history(run.info.run_id, "activation/mean"), key=lambda m: m.step)
    assert mean[-1].value > mean[0].value


def test_every_filters_figures_are_in_one_table(recorded, tmp_path):
    _, _, client, run, _ = recorded
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "filters.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["filter"] for r in rows] == FILTERS and {r["layer"] for r in rows} == {"block2_conv1"}
    assert rows[0]["robustness"] == pytest.approx(run.data.metrics["robustness/block2_conv1/f0001"])
    assert rows[1]["specificity"] == pytest.approx(run.data.metrics["specificity/block2_conv1/f0002"])
    assert rows[2]["picture"] == "pictures/filter_0003.png" and rows[2]["final_activation"] > 0
    # the run's quality figures are the means over its (live) filters' rows
    assert not any(r["dead"] for r in rows)
    for figure in ("final_activation", "robustness", "hf_fraction", "specificity"):
        assert run.data.metrics[f"quality/{figure}"] == pytest.approx(np.mean([r[figure] for r in rows]), rel=1e-5)


def test_params_are_the_picture_settings_and_tags_say_what_made_the_run(recorded):
    _, _, _, run, proc = recorded
    params, tags = run.data.params, run.data.tags
    assert params["layer"] == "block2_conv1" and params["iters"] == str(ITERS)
    assert params["model.name"] == "vgg16" and params["model.weights"] == str(WEIGHTS)
    assert params["filters"] == "[1, 2, 3]" and params["param"].startswith("Fourier(decay=1.0, ") and params["preset"] == "best"
    plumbing = [k for k, v in params.items() if k.startswith(("tracking", "hydra")) or v == "None"
                or k in ("model.default_layer", "optimized_metric") or k.endswith(("_target_", "_partial_"))]
    assert plumbing == []
    for key in ["git.dirty", "versions.tensorflow", "versions.keras", "versions.mlflow"]:
        assert tags[key]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tags["git.commit"] == tags["mlflow.source.git.commit"] == head.stdout.strip()
    import keras
    assert tags["versions.keras"] == keras.__version__
    assert tags["command"].startswith("python -m filterviz layer=block2_conv1")
    assert tags["filterviz.filters"] == "1,2,3"
    # the device, in the first console line and the record: here the CPU, its model and the flags that decide defaults
    import tensorflow as tf
    assert not tf.config.list_physical_devices("GPU")
    cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    assert tags["device"].startswith(f"CPU {cpu}, ") and ("avx2" in tags["device"]) == ("avx2" in this_cpu())
    assert proc.stdout.splitlines()[0] == f"device: {tags['device']}"
    assert run.info.run_name == ("vgg16 block2_conv1 f1-3 · input_size=48 iters=12 "
                                 "model.weights=vgg16_imagenet_notop.weights.h5")


def test_every_artifact_is_in_the_store(recorded, tmp_path):
    cwd, _, client, run, _ = recorded
    assert run.info.artifact_uri.startswith((cwd / "mlruns").as_uri())
    local = client.download_artifacts(run.info.run_id, "", str(tmp_path))
    names = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    expected = {f"pictures/filter_{f:04d}.png" for f in FILTERS} | {
        "grid.png", "loss_curve.png", "filters.json", "images.npy", "filters.npy", "losses.npy", "config_resolved.yaml",
        ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"}
    assert expected <= names, expected - names
    images = np.load(f"{local}/images.npy")
    assert images.shape == (3, 48, 48, 3) and not np.allclose(images, 0.5)
    assert np.load(f"{local}/losses.npy").shape == (3, ITERS)
    # each filter's activation per iteration is the curve the run charted; the final one is measured on the picture
    activations, final = np.load(f"{local}/activations.npy"), np.load(f"{local}/final_activations.npy")
    assert activations.shape == (3, ITERS) and final.shape == (3,)
    charted = sorted(client.get_metric_history(run.info.run_id, "activation/block2_conv1/f0001"), key=lambda m: m.step)
    np.testing.assert_allclose([m.value for m in charted], activations[0], rtol=1e-6)
    np.testing.assert_allclose(final[:CHARTED], [run.data.metrics[f"final_activation/block2_conv1/f{f:04d}"]
                                                 for f in FILTERS[:CHARTED]], rtol=1e-6)


def test_a_maco_run_records_its_attribution_maps(maco_run, tmp_path):
    from PIL import Image

    _, client, run = maco_run
    assert run.info.status == "FINISHED" and run.data.params["param"] == "Maco()"
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    images, attributions = np.load(local / "images.npy"), np.load(local / "attributions.npy")
    assert attributions.shape == images.shape == (2, 96, 96, 3)
    assert (attributions >= 0).all() and attributions.any(axis=(1, 2, 3)).all()
    for f in (0, 1):
        with Image.open(local / "attributions" / f"filter_{f:04d}.png") as png:
            assert (png.mode, png.size) == ("RGBA", (96, 96))
        # in MLflow's image views too, beside the pictures: key attribution/<layer>/f<i>, at the last step
        assert list((local / "images").glob(f"attribution~block1_conv1~f{f:04d}+step+3+*.png"))


def test_console_says_where_the_run_and_images_are(recorded):
    cwd, uri, _, run, proc = recorded
    assert f"MLflow run: {run.info.run_id}" in proc.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    assert f"iteration {ITERS}/{ITERS}" in proc.stdout and "iteration  1/12" in proc.stdout
    assert "images: " in proc.stdout


@pytest.fixture(scope="module")
def untracked(tmp_path_factory):
    """One run with tracking off, in bfloat16: what it writes, and what it says about the hardware."""
    cwd = tmp_path_factory.mktemp("untracked")
    proc = run_cli("tracking=off", "precision=bfloat16", "layer=block1_conv1", "iters=2", "filters=0",
                   "input_size=32", f"model.weights={WEIGHTS}", cwd=cwd)
    return cwd, proc


def test_tracking_off_writes_images_without_a_store(untracked):
    cwd, proc = untracked
    assert proc.returncode == 0, proc.stderr
    assert not (cwd / "mlruns").exists()
    assert "MLflow run" not in proc.stdout
    assert list(cwd.glob("outputs/*/*/results/pictures/filter_0000.png"))


@needs_weights
def test_the_job_runs_with_garbage_collection_on(tmp_path):
    """The command turns collection off for its imports only (a faster start): a long job or
    sweep that collected nothing would grow without bound. Importing filterviz leaves it alone."""
    probe = ("import gc, runpy, sys\n"
             "from filterviz import job\n"
             "plain = job.run\n"
             "job.run = lambda *a, **k: (print('collecting:', gc.isenabled(), 'frozen:', gc.get_freeze_count() > 0), "
             "plain(*a, **k))[1]\n"
             f"sys.argv = ['filterviz', 'tracking=off', 'layer=block1_conv1', 'iters=1', 'model.weights={WEIGHTS}']\n"
             "runpy.run_module('filterviz', run_name='__main__')\n")  # as `python -m filterviz`
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "collecting: True frozen: True" in proc.stdout
    imported = subprocess.run([sys.executable, "-c", "import gc, filterviz.atlas.__main__; print(gc.isenabled())"],
                              capture_output=True, text=True, timeout=300)
    assert imported.stdout.strip() == "True", imported.stderr


def test_bfloat16_says_when_the_hardware_only_emulates_it(untracked):
    _, proc = untracked
    assert proc.returncode == 0, proc.stderr
    warned = "warning: precision=bfloat16 on hardware without bfloat16 units" in proc.stderr
    assert warned == (not {"avx512_bf16", "amx_bf16"} & this_cpu() and GPUS == 0)


# Bad input as the user meets it, one case per place it is caught: before TensorFlow is imported
# (iters=0), the group check before Hydra (model=resnet), after the model loads (layer=nope), and a
# corrupt weights file (read by the HDF5 C library, whose own output only a real process would show).
BAD_INPUTS = [
    (["iters=0"], "iters=0: the number of iterations must be at least 1"),
    (["model=resnet"], "unknown model 'resnet': use one of convnextbase, convnextlarge, convnextsmall,"),
    (["layer=nope"], "unknown layer 'nope' in vgg16: conv layers are block1_conv1"),
    (["model.weights=CORRUPT"], "could not load weights from"),
]
# Every other check is a ConfigError out of job.run, which the command prints as that same one
# error line with exit 1 (filterviz/__main__.py); checked in this process, a model build each, not a
# TensorFlow import each.
BAD_SETTINGS = [
    (["layer=block2_conv1", "filters=128"], "filter 128 is out of range: block2_conv1 has 128 filters, 0..127"),
    (["step_size=0"], "the step size must be greater than 0"),
    (["layer=block5_conv1", "input_size=15"], "input_size=15 is too small for layer block5_conv1: the minimum is 16"),
    (["model.weights=/no/such/file.h5"], "weights file not found: /no/such/file.h5"),
    (["filters=1-3"], "filters='1-3' is not valid: use an index (3), a list ([0,5,9]), a range (0:16)"),
    (["model=file"], "model=file needs model.path=<your .keras file>"),
    (["seed=-1"], "seed=-1: a seed is a whole number from 0 to 4294967295"),
    (["input_size=100000"], "input_size=100000 needs about"),
    (["layer=block1_conv1", "objective.border=1000"], "objective.border=1000 leaves nothing of block1_conv1's"),
    (["param.decay=fast"], "param.decay: Value 'fast' of type 'str' could not be converted to Float"),
    (["optimized_metric=beauty"], "optimized_metric=beauty: not a figure of a run"),
    (["tracking.uri=sqlite:////proc/no/store.db"], "cannot make the MLflow store's folder /proc/no"),
    (["+atlas=default", "atlas.views=0"], "atlas.views=0: the quality figures average over at least 1 random view"),
]
HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # Python's default


def with_weights(overrides: list) -> list:
    given = any(o.startswith("model.weights=") for o in overrides)
    return overrides if given else [*overrides, f"model.weights={WEIGHTS}"]


def assert_store_unchanged(recorded):
    _, _, client, run, _ = recorded
    runs = client.search_runs([run.info.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run.info.run_id, "FINISHED")]


@pytest.mark.parametrize("overrides, says", BAD_INPUTS, ids=[b[0][-1] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_1_and_leaves_the_store_intact(recorded, tmp_path, overrides, says):
    cwd = recorded[0]
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"\x89HDF\r\n junk")
    overrides = with_weights([o.replace("CORRUPT", str(corrupt)) for o in overrides])
    proc = run_cli(*overrides, "iters=1" if "iters=0" not in overrides else "seed=0", cwd=cwd,
                   env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: "), proc.stderr
    assert says in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert_store_unchanged(recorded)


@pytest.mark.parametrize("overrides, says", BAD_SETTINGS, ids=[b[0][-1] for b in BAD_SETTINGS])
def test_bad_settings_are_a_one_line_config_error_and_leave_the_store_intact(recorded, tmp_path, monkeypatch,
                                                                            capsys, overrides, says):
    from filterviz import job
    from filterviz.errors import ConfigError

    monkeypatch.chdir(recorded[0])  # the default store, ./mlruns, is the recorded one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    overrides = [*with_weights(overrides), "iters=1"]
    cfg = make_cfg(*overrides)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ConfigError) as error:
        warnings.simplefilter("always")
        job.run(cfg, tmp_path / "out", overrides)
    message = str(error.value)
    assert says in message and "\n" not in message
    # nothing else would reach the console: no other output, no warning Python shows by default
    assert capsys.readouterr().err == ""
    assert [w.message for w in caught if not issubclass(w.category, HIDDEN_WARNINGS)] == []
    assert_store_unchanged(recorded)


def test_a_wrong_type_fails_in_hydra_with_its_own_message(tmp_path):
    proc = run_cli("iters=abc", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Value 'abc' of type 'str' could not be converted to Integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_store_problems_are_one_line_and_change_nothing(recorded, tmp_path):
    cwd, uri, client, run, _ = recorded
    args = ["iters=1", "input_size=16", "layer=block1_conv1", f"model.weights={WEIGHTS}"]
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    proc = run_cli(*args, "tracking.experiment=gone", cwd=cwd, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: experiment 'gone' is deleted in {uri}: restore it (mlflow experiments "
                                   f"restore --experiment-id {gone}) or choose another tracking.experiment")

    store_dir = cwd / "mlruns"
    with read_only(store_dir / "mlflow.db", store_dir):  # SQLite also writes a journal beside the file
        proc = run_cli(*args, cwd=cwd, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: the MLflow store {uri} is read-only")
    runs = client.search_runs([run.info.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run.info.run_id, "FINISHED")]


@contextmanager
def read_only(*paths):
    """Really read-only, also for root (CI runs as root): the immutable attribute, else permissions."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
            pytest.skip("cannot make the store read-only here (chattr +i refused)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        return
    modes = [p.stat().st_mode for p in paths]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in zip(paths, modes):
            p.chmod(mode)


def test_a_filter_that_cannot_fire_is_retried_in_a_real_run_and_counted_dead(tmp_path):
    """The default retry_dead=2 on a filter that provably never fires: its kernel is negative
    everywhere and every picture is positive, so its ReLU output is 0 for any picture. Filter 0's
    kernel is positive: it fires on any picture."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(2, 3, activation="relu", name="conv")
    model = keras.Model(inputs, conv(inputs), name="one_dead")
    conv.set_weights([np.stack([np.full((3, 3, 3), 0.1), np.full((3, 3, 3), -0.1)], axis=-1), np.array([0.0, -1.0])])
    model.save(tmp_path / "one_dead.keras")

    iters = 8
    proc = run_cli("model=file", f"model.path={tmp_path / 'one_dead.keras'}", "model.weights=null", "layer=conv",
                   "filters=0:2", f"iters={iters}", "input_size=16", "hydra.run.dir=out", cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    assert "filter(s) 1 found nothing to climb: retrying from new random starts (retry_dead=2)" in proc.stdout
    assert "dead filter(s), nothing to climb: 1" in proc.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    assert run.data.metrics["quality/dead_filters"] == 1
    # preprocess=true (the default recipe's) on a saved model: it was fed the picture as it is, and says so
    assert run.data.params["preprocess"] == "True" and run.data.params["model.preprocess"] == "none"
    assert "note: model=file is fed the [0, 1] picture as it is" in proc.stderr
    # the retries' steps continue the first attempt's: 3 attempts of `iters` steps, each step once
    dead = client.get_metric_history(run.info.run_id, "activation/conv/f0001")
    assert sorted(m.step for m in dead) == list(range(3 * iters)) and {m.value for m in dead} == {0.0}
    live = client.get_metric_history(run.info.run_id, "activation/conv/f0000")
    assert sorted(m.step for m in live) == list(range(iters)) and min(m.value for m in live) > 0


def test_a_saved_classifier_is_rendered_by_class_through_the_command(tmp_path):
    """A one-channel model with a softmax head, as a user saves it: its class units (on the logits)
    through `python -m filterviz`, fed [-1, 1] (model.preprocess=tf). Without random views: the
    default's shift a 16 px picture under a Flatten head by half its width, and a logit does not climb."""
    import keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="classes")(x)).save(tmp_path / "cls.keras")
    proc = run_cli("model=file", f"model.path={tmp_path / 'cls.keras'}", "model.weights=null", "layer=classes",
                   "transforms=none", "model.preprocess=tf", "filters=[1,7]", "iters=10", "input_size=16", "hydra.run.dir=out", cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    images, losses = np.load(tmp_path / "out/results/images.npy"), np.load(tmp_path / "out/results/losses.npy")
    assert images.shape == (2, 16, 16, 1) and (losses[:, -1] > losses[:, 0]).all()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["layer"] == "classes"
    assert run.data.params["model.preprocess"] == "tf"  # [-1, 1], which a one-channel model can take
    assert "note: colour decorrelation is for RGB and this model takes 1 channel(s)" in proc.stderr
