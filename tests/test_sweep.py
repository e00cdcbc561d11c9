"""Sweeps, comparison and reproduction, as users run them, against temp stores."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import NOT_THE_HARDWARE_DEFAULTS, ROOT, WEIGHTS, needs_weights, run_cli
from filterviz.compare import differing_settings
from filterviz.reproduce import changed_versions
from filterviz.recording.settings import describe, filter_span, run_name
from filterviz.recording.sweep import swept

SMALL = ["layer=block1_conv1", "iters=3", "input_size=16", f"model.weights={WEIGHTS}"]


def runs_of(store_dir):
    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("filterviz")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("filterviz.sweep") == "parent"]
    children = [r for r in runs if r not in parents]
    return client, parents, children


def test_sweep_names_come_from_the_swept_overrides():
    assert swept(["layer=block1_conv2,block3_conv1", "iters=100", "step_size=range(1,3)"]) == [
        "layer=block1_conv2,block3_conv1", "step_size=range(1,3)"]
    job = ["layer=block3_conv1", "step_size=10", "iters=100", "model.weights=/data/w.h5", "tracking.uri=x",
           "hydra/launcher=joblib"]
    assert run_name(job, ["layer", "step_size"]) == "layer=block3_conv1 step_size=10"
    assert run_name(job) == "iters=100 layer=block3_conv1 model.weights=w.h5 step_size=10"
    assert describe("vgg16", "block3_conv1", [0, 1, 2], job) == \
        "vgg16 block3_conv1 f0-2 · iters=100 model.weights=w.h5 step_size=10"
    assert [filter_span(f) for f in ([7], [3, 4, 5], [1, 5, 9], list(range(0, 40, 2)))] == [
        "f7", "f3-5", "f1,5,9", "20 filters"]


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory):
    """Four joblib jobs at once on a store that does not exist yet."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "filters=0,1", "step_size=1,10",
                   *SMALL, cwd=cwd, env={"MLFLOW_TRACKING_URI": ""})
    return cwd, proc


@needs_weights
def test_parallel_sweep_on_a_fresh_store_records_every_run_under_one_parent(parallel_sweep, tmp_path):
    cwd, proc = parallel_sweep
    assert proc.returncode == 0, proc.stderr
    _, [parent], children = runs_of(cwd)
    assert parent.info.run_name == "vgg16 block1_conv1 · sweep filters=0,1 step_size=1,10"
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "filters=0 step_size=1", "filters=0 step_size=10", "filters=1 step_size=1", "filters=1 step_size=10"]
    # the parent's row: what every job shared, and the best job's figure
    assert parent.data.params["layer"] == "block1_conv1" and parent.data.params["iters"] == "3"
    assert "step_size" not in parent.data.params and "filters" not in parent.data.params
    best = max(children, key=lambda r: r.data.metrics["quality/final_activation"])
    assert parent.data.metrics["best/quality/final_activation"] == best.data.metrics["quality/final_activation"]
    assert parent.data.tags["filterviz.best_run"] == f"{best.info.run_name} ({best.info.run_id})"
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert len(child.data.metrics) > 0
    # the sweep as Hydra saw it: the parent's multirun.yaml is the sweep folder's
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    logged = OmegaConf.load(client.download_artifacts(parent.info.run_id, "multirun.yaml", str(tmp_path)))
    assert list(logged.hydra.overrides.task) == ["filters=0,1", "step_size=1,10", *SMALL]
    assert logged.hydra.launcher.n_jobs == 4
    assert logged == OmegaConf.load(next(cwd.glob("multirun/*/*/multirun.yaml")))


@needs_weights
def test_a_failing_job_ends_failed_the_others_finish_and_the_sweep_says_which(tmp_path):
    proc = run_cli("-m", "hydra/launcher=submitit_local", "filters=0,999", *SMALL, cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 1
    assert "error: 1 job(s) of the sweep failed:" in proc.stderr
    assert "filters=999" in proc.stderr and "filter 999 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr
    _, [parent], [child] = runs_of(tmp_path)
    assert (child.info.run_name, child.info.status) == ("filters=0", "FINISHED")
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == "1 job(s) failed"


@needs_weights
def test_compare_draws_the_sweep_beside_it_and_logs_it_to_the_parent(parallel_sweep):
    cwd, _ = parallel_sweep
    client, [parent], children = runs_of(cwd)
    assert differing_settings(children) == ["filters", "step_size"]
    before = set(cwd.iterdir())
    proc = subprocess.run([sys.executable, "-m", "filterviz.compare", parent.info.run_id],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = Path(parent.data.tags["filterviz.sweep_dir"]) / f"compare-{parent.info.run_id[:12]}.png"
    assert f"comparison: {out}" in proc.stdout and out.stat().st_size > 10_000
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "compare")] == [f"compare/{out.name}"]

    proc = subprocess.run([sys.executable, "-m", "filterviz.compare", "filterviz", "--filter", "params.step_size='10.0'"],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [figure] = cwd.glob("outputs/compare/*/*/compare-filterviz.png")
    assert f"comparison: {figure.resolve()}" in proc.stdout
    # a row of pictures per run: the sweep's 4 runs are two rows (1.3 in at 90 dpi, less the spacing) taller than these 2
    from PIL import Image

    with Image.open(out) as four, Image.open(figure) as two:
        assert 180 < four.height - two.height < 240, (four.size, two.size)
    assert set(cwd.iterdir()) - before == {cwd / "outputs"}, "nothing loose in the working directory"

    proc = subprocess.run([sys.executable, "-m", "filterviz.compare", "filterviz", "--filter", "params.layer='none'"],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: found 0 finished run(s) for 'filterviz'; compare needs at least 2"


@needs_weights
def test_reproduce_gives_the_identical_image_and_tags_the_new_run(parallel_sweep):
    cwd, _ = parallel_sweep
    client, _, children = runs_of(cwd)
    original = next(r for r in children if r.info.run_name == "filters=1 step_size=10")
    proc = subprocess.run([sys.executable, "-m", "filterviz.reproduce", original.info.run_id],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "identical: run " in proc.stdout and f"reproduces {original.info.run_id} bit for bit" in proc.stdout
    [again] = client.search_runs([original.info.experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert again.info.status == "FINISHED"
    assert again.data.params["filters"] == "1" and again.data.params["step_size"] == "10.0"


@needs_weights
def test_reproduce_says_different_with_exit_1_and_warns_of_changed_code_and_libraries(parallel_sweep):
    """A record whose images no longer match what its config makes (here: edited in the store),
    and whose code, Keras version and device are not today's."""
    cwd, _ = parallel_sweep
    client, _, children = runs_of(cwd)
    original = next(r for r in children if r.info.run_name == "filters=0 step_size=1")
    run_id = original.info.run_id
    recorded = Path(original.info.artifact_uri[len("file://"):]) / "images.npy"
    images = np.load(recorded)
    np.save(recorded, np.clip(images + 0.25, 0, 1))
    client.set_tag(run_id, "git.commit", "0" * 40)
    client.set_tag(run_id, "versions.keras", "2.0.0")
    client.set_tag(run_id, "device", "GPU NVIDIA H100 80GB HBM3 (compute capability 9.0)")  # made on a GPU

    proc = subprocess.run([sys.executable, "-m", "filterviz.reproduce", run_id], cwd=cwd, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 1, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import keras
    from filterviz.core.hardware import describe_device
    assert warnings == [f"warning: git.commit: run had {'0' * 40}, now {head}; the images may differ",
                        f"warning: versions.keras: run had 2.0.0, now {keras.__version__}; the images may differ",
                        "warning: device: run had GPU NVIDIA H100 80GB HBM3 (compute capability 9.0), "
                        f"now {describe_device()}; the images may differ"]
    [verdict] = [line for line in proc.stdout.splitlines() if line.startswith("different: ")]
    [again] = client.search_runs([original.info.experiment_id], f"tags.reproduces = '{run_id}'")
    assert verdict == f"different: largest pixel difference 0.25 (run {again.info.run_id} vs {run_id})"
    assert again.info.status == "FINISHED" and again.data.tags["reproduce.verdict"] == "different"
    assert again.data.tags["reproduce.max_pixel_difference"] == "0.25"


def test_names_and_comparisons_share_one_meaning_of_setting():
    from filterviz.recording.settings import is_setting

    assert [is_setting(k) for k in ["model.weights", "layer", "param.decay", "tracking.uri", "hydra.run.dir",
                                    "hydra/launcher", "+tracking.tags.note"]] == [True, True, True] + [False] * 4
    assert changed_versions({"git.commit": "abc", "versions.keras": "3.1"},
                            {"git.commit": "def", "versions.keras": "3.1", "versions.mlflow": "3"}) == [
        "git.commit: run had abc, now def"]


@needs_weights
def test_reproduce_rebuilds_the_run_from_its_full_record_not_todays_defaults(maco_run, tmp_path):
    """On a `param=maco` run (`experiment=best` and sweeps are reproduced above): its random phase,
    and the attribution map the ascent adds up, come back bit for bit too."""
    cwd, client, original = maco_run

    # Today's defaults changed, in a copy of the package (the checkout's own conf/ is not ours to
    # edit): the copy comes first on PYTHONPATH, ahead of the installed package.
    changed = tmp_path / "changed"
    shutil.copytree(ROOT / "filterviz", changed / "filterviz", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", changed / "filterviz" / "conf")
    shutil.copytree(ROOT / "experiments", changed / "filterviz" / "experiments")
    defaults = changed / "filterviz" / "conf" / "config.yaml"
    saved = defaults.read_text()
    defaults.write_text(saved.replace("\ninput_size: 96\n", "\ninput_size: 40\n").replace("\nseed: 0\n", "\nseed: 3\n"))
    assert defaults.read_text().count("40") > saved.count("40")
    env = {**os.environ, "PYTHONPATH": str(changed)}
    today = subprocess.run([sys.executable, "-m", "filterviz", "--cfg", "job"], cwd=cwd, capture_output=True,
                           text=True, env=env)
    assert "\ninput_size: 40\n" in today.stdout and "\nseed: 3\n" in today.stdout, today.stderr
    proc = subprocess.run([sys.executable, "-m", "filterviz.reproduce", original.info.run_id],
                          cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"reproduces {original.info.run_id} bit for bit" in proc.stdout
    [again] = client.search_runs([original.info.experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert (again.data.params["input_size"], again.data.params["seed"]) == ("96", "0")
    assert again.data.params["param"] == "Maco()"
    # the precision and XLA mode it ran in, logged resolved, are replayed, not today's hardware defaults
    ran_with = dict(o.split("=") for o in NOT_THE_HARDWARE_DEFAULTS)
    assert original.data.params["precision"] == again.data.params["precision"] == ran_with["precision"]
    assert original.data.params["xla"] == again.data.params["xla"] == ran_with["xla"].capitalize()

    def attributions(run):
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        return np.load(client.download_artifacts(run.info.run_id, "attributions.npy", str(folder)))

    np.testing.assert_array_equal(attributions(original), attributions(again))
    assert again.data.tags["reproduce.verdict"] == "identical"
    assert again.data.tags["reproduce.max_pixel_difference"] == "0"
    assert again.info.run_name == f"reproduces {original.info.run_name}"


def test_reproduce_and_compare_refuse_a_missing_store_in_one_line(tmp_path):
    for module in ["filterviz.reproduce", "filterviz.compare"]:
        proc = subprocess.run([sys.executable, "-m", module, "abc"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"error: no MLflow store at {tmp_path.resolve()}/mlruns/mlflow.db: " \
                                      "pass --tracking-uri or set MLFLOW_TRACKING_URI"
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()


@needs_weights
def test_optuna_maximises_the_figure_optimized_metric_names(tmp_path):
    """Not the default figure: a sweeper that ignored the key would return an activation (hundreds)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    metric = "quality/hf_fraction"
    proc = run_cli("-m", "experiment=optuna_step", "hydra.sweeper.n_trials=2", "filters=0:2", *SMALL,
                   f"optimized_metric={metric}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    _, [parent], children = runs_of(tmp_path)
    assert "step_size=tag(log, interval(0.5, 50))" in parent.info.run_name
    assert len(children) == 2
    figures = [c.data.metrics[metric] for c in children]
    assert all(math.isfinite(f) for f in figures)
    best = OmegaConf.load(next(tmp_path.glob("multirun/*/*/optimization_results.yaml")))
    assert best.best_value == pytest.approx(max(figures), rel=1e-5)
