"""A small atlas made in-process once per session, and how tests start and read atlases
(tests/test_atlas.py, tests/test_slurm.py). Its fixtures are imported once, in conftest.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from filterviz.recording import tracking

LAYERS = {"conv_a": 6, "conv_b": 8, "conv_c": 4}


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """Three convolutions (a 1x1 one too), random weights fixed by a seed, saved as a .keras file."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(4, 1, name="conv_c")(x)
    path = tmp_path_factory.mktemp("model") / "small.keras"
    keras.Model(inputs, x, name="small").save(path)
    return path


def atlas_args(model: Path) -> list:
    return ["model=file", f"model.path={model}", "model.weights=null", "experiment=seed", "iters=10",
            "input_size=24", "atlas.chunk=2"]


def start_atlas(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "filterviz.atlas", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0", "MLFLOW_TRACKING_URI": ""})


def store(cwd: Path) -> MlflowClient:
    return tracking.connect(tracking.resolve_store(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"))


def runs_by_kind(cwd: Path):
    client = store(cwd)
    runs = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    parents = [r for r in runs if r.data.tags.get("filterviz.sweep") == "atlas"]
    return parents, [r for r in runs if r not in parents]


def site_of(proc_stdout: str) -> Path:
    [line] = [line for line in proc_stdout.splitlines() if line.startswith("atlas page: ")]
    return Path(line[len("atlas page: "):]).parent


def pictures(site: Path) -> dict:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.glob("pictures/*/*.png"))}


@pytest.fixture(scope="session")
def uninterrupted(small_model, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("atlas-whole")
    proc = start_atlas(atlas_args(small_model), cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return cwd, out, err
