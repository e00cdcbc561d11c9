"""Record runs in MLflow: where the store is, and what one run logs.

Uses an explicit MlflowClient (no global MLflow state), so a library caller or a test can
point at any store without side effects.
"""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from filterviz.errors import ConfigError, first_line

DEFAULT_STORE_DIR = "mlruns"
MAX_BATCH = 1000  # MLflow's limit of entities per log_batch call
MAX_PARAMS = 100  # and of params per call
SWEEP_TAG = "filterviz.sweep"


@dataclass(frozen=True)
class Store:
    uri: str
    # where new experiments keep artifacts; None lets a tracking server decide
    artifact_location: Optional[str]

    def ui_command(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri}"
        return f"mlflow ui --backend-store-uri {self.uri}"


def resolve_store(uri: Optional[str] = None, must_exist: bool = False) -> Store:
    """The store to use: `uri`, else $MLFLOW_TRACKING_URI, else SQLite in ./mlruns.

    A SQLite path is made absolute once, here, so that every later step (and the printed
    `mlflow ui` command) points at the same file whatever the working directory.
    `must_exist`: for readers, which must not create an empty store by mistake.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE_DIR}/mlflow.db"
    if not uri.startswith("sqlite:///"):
        return Store(uri, None)
    db = Path(uri[len("sqlite:///") :]).expanduser().resolve()
    if must_exist and not db.is_file():
        raise ConfigError(f"no MLflow store at {db}: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    db.parent.mkdir(parents=True, exist_ok=True)
    return Store(f"sqlite:///{db}", (db.parent / "artifacts").as_uri())


def open_run(run_id: str, uri: Optional[str] = None) -> Tuple["Tracker", Run]:
    """An existing run, and a Tracker on its experiment."""
    store = resolve_store(uri, must_exist=True)
    client = MlflowClient(tracking_uri=store.uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise ConfigError(f"no run {run_id} in {store.uri} ({first_line(e)})") from None
    return Tracker(store, client.get_experiment(run.info.experiment_id).name), run


class Tracker:
    """One experiment in one store."""

    def __init__(self, store: Store, experiment: str):
        self.store = store
        try:
            self.client = MlflowClient(tracking_uri=store.uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment, artifact_location=store.artifact_location)
            )
        except Exception as e:
            raise ConfigError(f"could not open the MLflow store {store.uri}: {first_line(e)}") from None

    @contextmanager
    def run(self, name: Optional[str], params: Mapping[str, str], tags: Mapping[str, str],
            parent_run_id: Optional[str] = None) -> Iterator[str]:
        """Create a run and yield its id; it ends FINISHED, or FAILED with the error recorded."""
        tags = dict(tags)
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # shown nested under the sweep in the UI
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        try:
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS):
                self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS])
            yield run_id
        except KeyboardInterrupt:
            self._end(run_id, RunStatus.KILLED, "interrupted by the user")
            raise
        except BaseException as e:
            self._end(run_id, RunStatus.FAILED, f"{type(e).__name__}: {first_line(e)}")
            raise
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def start_parent(self, name: str, tags: Mapping[str, str]) -> str:
        """The run a sweep's jobs hang under; ended by `end_parent`."""
        return self.client.create_run(self.experiment_id, run_name=name, tags={**tags, SWEEP_TAG: "parent"}).info.run_id

    def end_parent(self, run_id: str, failed: int) -> None:
        if failed:
            self._end(run_id, RunStatus.FAILED, f"{failed} job(s) failed")
        else:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def _end(self, run_id: str, status: int, error: str) -> None:
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_terminated(run_id, RunStatus.to_string(status))

    def log_losses(self, run_id: str, filters: Sequence[int], losses: np.ndarray) -> None:
        """Per-iteration loss of each filter and their mean, step = iteration, in few calls."""
        now = int(time.time() * 1000)
        series = {f"loss/filter_{f}": curve for f, curve in zip(filters, losses)}
        series["loss/mean"] = losses.mean(axis=0)
        metrics = [
            Metric(key, float(value), now, step) for key, curve in series.items() for step, value in enumerate(curve)
        ]
        self.log_metrics(run_id, metrics)

    def log_values(self, run_id: str, **values: float) -> None:
        """Scalar metrics of the whole run."""
        now = int(time.time() * 1000)
        self.log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in values.items()])

    def log_metrics(self, run_id: str, metrics: List[Metric]) -> None:
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri


def flatten(config: Mapping, prefix: str = "") -> Dict[str, str]:
    """Nested config to MLflow params with dotted keys (log_params does not flatten)."""
    flat: Dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def code_versions() -> Dict[str, str]:
    """The code and library versions a run's result depends on."""
    import keras
    import tensorflow as tf

    commit, dirty = _git_state(Path(__file__).resolve().parent)
    return {
        "git.commit": commit,
        "git.dirty": dirty,
        "versions.tensorflow": tf.__version__,
        "versions.keras": keras.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.python": sys.version.split()[0],
    }


def provenance_tags(command: str) -> Dict[str, str]:
    """What produced a run: code_versions(), the command line and its working directory."""
    versions = code_versions()
    commit = versions["git.commit"]
    tags = {
        **versions,
        "command": command,
        "cwd": os.getcwd(),  # relative paths in the overrides are relative to it
    }
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit  # shown by the MLflow UI
    return tags


def _git_state(source_dir: Path) -> tuple:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source_dir), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, str(dirty).lower()

