import os
import subprocess
import sys
from pathlib import Path

import pytest

# Headless Chromium fixtures, defined once here: a fixture imported into several test modules is
# a separate session fixture in each, and a second Playwright in one process fails.
from mlflow_ui import chromium_browser, page_errors, ui_page  # noqa: E402,F401
from atlases import small_model, uninterrupted  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("FILTERVIZ_TEST_WEIGHTS", ROOT.parent / "shared/weights/vgg16_imagenet_notop.weights.h5"))

needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"ImageNet VGG16 weights not found at {WEIGHTS} (see shared/weights/README.md)"
)


@pytest.fixture(scope="session")
def vgg16():
    if not WEIGHTS.is_file():
        pytest.skip(f"ImageNet VGG16 weights not found at {WEIGHTS}")
    from filterviz.core.models import load_model

    return load_model("vgg16", str(WEIGHTS))


IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip is a failure: a missing service, browser or weights file must not pass as
    green skips (.ci/run also stops before the tests when one is missing)."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {reason}"


# The slowest files first (seconds, one process, 2-CPU Xeon: sweep 203, slurm 194, live_runs 167,
# atlas 157, cli 138, team_store 99, api 110, mlflow_ui 48, notebook 39; the rest under 30), so
# that xdist's workers, a file each (pyproject.toml), end together instead of one waiting out a
# slow file taken last; xdist would otherwise start with the files of most tests.
SLOW_FIRST = ["test_sweep.py", "test_slurm.py", "test_live_runs.py", "test_atlas.py", "test_cli.py", "test_api.py",
              "test_exemplars_pass.py",
              "test_team_store.py", "test_mlflow_ui.py", "test_notebook.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


def make_cfg(*overrides: str):
    """The config that `python -m filterviz <overrides>` runs with, composed in this process."""
    from hydra import compose, initialize_config_module

    from filterviz.config import register_configs

    register_configs()
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        return compose("config", overrides=list(overrides))


def run_cli(*overrides: str, cwd: Path, env=None, timeout: float = 280) -> subprocess.CompletedProcess:
    """`python -m filterviz ...` in a subprocess, as a user runs it (within pytest's per-test bound)."""
    return subprocess.run(
        [sys.executable, "-m", "filterviz", *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


def this_cpu() -> set:
    """This machine's CPU flags, read here from /proc/cpuinfo: the tests' own reference for the
    hardware defaults, not the code under test."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def _gpus_tensorflow_sees() -> int:
    if not any(Path("/proc/driver/nvidia/gpus").glob("*")):
        return 0  # without a driver there is none to see (and no TensorFlow start-up on the console)
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


# The hardware defaults follow the GPUs TensorFlow sees, not the driver's list: a machine with an
# NVIDIA driver and a TensorFlow without CUDA computes on its CPU.
GPUS = _gpus_tensorflow_sees()


def _not_the_hardware_defaults() -> list:
    """precision and xla set the other way from what this machine would choose: a reproduction
    that did not replay the recorded values would get today's."""
    from filterviz.core.hardware import fastest_precision, xla_is_faster

    return [f"precision={'float32' if fastest_precision('vgg16') == 'bfloat16' else 'bfloat16'}",
            f"xla={str(not xla_is_faster()).lower()}"]


NOT_THE_HARDWARE_DEFAULTS = _not_the_hardware_defaults()


@pytest.fixture(scope="session")
def maco_run(tmp_path_factory):
    """One `param=maco` run through the CLI into a fresh store, in the precision and XLA mode this
    machine would not choose: what it records, and a run to reproduce."""
    from mlflow.tracking import MlflowClient

    if not WEIGHTS.is_file():
        pytest.skip(f"ImageNet VGG16 weights not found at {WEIGHTS}")
    cwd = tmp_path_factory.mktemp("maco")
    proc = run_cli("param=maco", "layer=block1_conv1", "filters=0:2", "iters=3", f"model.weights={WEIGHTS}",
                   *NOT_THE_HARDWARE_DEFAULTS, cwd=cwd, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    return cwd, client, run
