"""Record runs in MLflow: where the store is, and what one run logs.

Uses an explicit MlflowClient (no global MLflow state), so a library caller or a test can
point at any store without side effects. Every run carries its owner (host, process id and
start time) and a heartbeat; opening the store ends runs whose owner is gone (`reap`).
"""

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from filterviz.errors import ConfigError, Stopped, first_line
from filterviz.recording.owners import owner_gone, owner_tags

# MLflow's asynchronous logging thread otherwise waits on its queue with a 1 s timeout, and
# ending a run waits for that (0.5 s on average, experiments/startup.py). With buffering it
# waits on an event that the run's end sets, and sends what a second gathered as one write.
os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")

DEFAULT_STORE_DIR = "mlruns"
MAX_BATCH = 1000  # MLflow's limit of entities per log_batch call
MAX_PARAMS = 100  # and of params per call
SWEEP_TAG = "filterviz.sweep"
# Without the experiment kind, MLflow 3.17 treats an experiment as a GenAI one; the note is
# the experiment's description in the UI.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "filterviz: pictures of what the filters of a convolutional network respond to, made by gradient "
        "ascent. One run = one layer and some of its filters, named model, layer, filters, then the settings "
        "given. Params: the settings that made the pictures (preset: the preset used). Metrics: "
        "activation/mean and objective/mean per iteration; per charted filter its activation per iteration "
        "(activation/<layer>/f0012) and final figures; quality/* over the run. Model metrics tab: each "
        "charted filter's picture by step (slider). Artifacts: every picture (pictures/), filters.json (every "
        "filter's figures), raw arrays, the full config; `python -m filterviz.reproduce <run id>` runs it again."),
}
# MLflow retries an unreachable server for minutes by default; say so within seconds instead.
# MLflow logs "Creating initial ... tables" on a new store, and every database error with its
# traceback; filterviz says what went wrong with the store in one line (store_error).
# The same for a tracking server that went away while points were being sent in the background.
for _logger in ("mlflow.store.db.utils", "mlflow.utils.async_logging.async_logging_queue"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL)
# And its download progress bars are noise between filterviz's own lines.
for _name, _value in {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
    os.environ.setdefault(_name, _value)


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
    if db.is_dir() or (db.is_file() and db.stat().st_size and not _is_sqlite(db)):
        raise ConfigError(f"{db} is not an MLflow store (not an SQLite database): point at the store's mlflow.db "
                          "(--tracking-uri or tracking.uri=sqlite:///path/mlflow.db)")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make the MLflow store's folder {db.parent} ({e.strerror}): "
                          "set tracking.uri to a writable place") from None
    return Store(f"sqlite:///{db}", (db.parent / "artifacts").as_uri())


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


@contextmanager
def _store_lock(store: Store) -> Iterator[None]:
    """Creating or migrating a SQLite store from two processes at once corrupts it: one at a time."""
    if not store.uri.startswith("sqlite:///"):
        yield
        return
    with open(store.uri[len("sqlite:///") :] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(store: Store) -> MlflowClient:
    """A client of `store`. MLflow creates or migrates a SQLite store's tables as the client is
    made, so it is made under the store's lock: a reader that opens the store while a new run
    creates it would otherwise run the same migration at the same time and fail."""
    with _store_lock(store):
        return MlflowClient(tracking_uri=store.uri)


def open_run(run_id: str, uri: Optional[str] = None) -> Tuple["Tracker", Run]:
    """An existing run, and a Tracker on its experiment."""
    store = resolve_store(uri, must_exist=True)
    client = connect(store)
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
            with _store_lock(store):
                self.client = MlflowClient(tracking_uri=store.uri)  # under the lock, as connect
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    self.experiment_id = self._create(experiment)
                else:
                    self.experiment_id = found.experiment_id
        except Exception as e:
            raise store_error(store, e) from None
        if found is not None and found.lifecycle_stage == "deleted":
            raise ConfigError(f"experiment {experiment!r} is deleted in {store.uri}: restore it "
                              f"(mlflow experiments restore --experiment-id {found.experiment_id}) "
                              "or choose another tracking.experiment")
        self.reap()

    def _create(self, experiment: str) -> str:
        """A new experiment's id. Two jobs of a sweep can both find no experiment on a server and
        both create it: the one that loses the race uses the winner's."""
        try:
            return self.client.create_experiment(
                experiment, artifact_location=self.store.artifact_location, tags=EXPERIMENT_TAGS)
        except Exception:
            created = self.client.get_experiment_by_name(experiment)
            if created is None:
                raise
            return created.experiment_id

    def reap(self) -> List[str]:
        """End as FAILED the runs of this experiment left RUNNING by a process that is gone: on this
        host, one that no longer exists; elsewhere, one whose heartbeat stopped STALE_SECONDS ago."""
        try:
            running = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'")
        except Exception as e:
            raise store_error(self.store, e) from None
        ended = []
        for run in running:
            reason = owner_gone(run.data.tags)
            if reason:
                self._end(run.info.run_id, RunStatus.FAILED, reason)
                ended.append(run.info.run_id)
        return ended

    @contextmanager
    def run(self, name: Optional[str], params: Mapping[str, str], tags: Mapping[str, str],
            parent_run_id: Optional[str] = None) -> Iterator[str]:
        """Create a run and yield its id; it ends FINISHED, or FAILED with the error recorded."""
        tags = {**tags, **owner_tags()}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # shown nested under the sweep in the UI
        try:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.log_params(run_id, params)
        except Exception as e:
            raise store_error(self.store, e) from None
        try:
            yield run_id
        except (KeyboardInterrupt, Stopped) as e:
            self._end(run_id, RunStatus.KILLED, str(e) or "interrupted by the user")
            raise
        except BaseException as e:
            self._end(run_id, RunStatus.FAILED, f"{type(e).__name__}: {first_line(e)}" if not isinstance(
                e, ConfigError) else str(e))
            raise
        try:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except Exception as e:
            raise store_error(self.store, e) from None

    def start_parent(self, name: str, tags: Mapping[str, str]) -> str:
        """The run a sweep's jobs hang under; ended by `end_parent`."""
        tags = {**tags, **owner_tags(), SWEEP_TAG: "parent"}
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def end_parent(self, run_id: str, failed: int, stopped: str = "") -> None:
        if stopped:
            self._end(run_id, RunStatus.KILLED, stopped)
        elif failed:
            self._end(run_id, RunStatus.FAILED, f"{failed} job(s) failed")
        else:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def _end(self, run_id: str, status: int, error: str) -> None:
        """Best effort: a store that is gone must not hide the error that ended the run."""
        try:
            self.client.set_tag(run_id, "error", error[:5000])
            self.client.set_terminated(run_id, RunStatus.to_string(status))
        except Exception:
            pass

    def log_curves(self, run_id: str, **curves: np.ndarray) -> None:
        """Each (n_images, iters) curve's mean over images as `<name>/mean` (step = iteration)."""
        now = int(time.time() * 1000)
        self.log_metrics(run_id, [Metric(f"{name}/mean", float(v), now, step) for name, values in curves.items()
                                  for step, v in enumerate(np.nanmean(values, axis=0))])

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS])

    def finished_children(self, parent_run_id: str) -> List[Run]:
        """The FINISHED runs under a sweep's or an atlas's parent, oldest first."""
        return self.client.search_runs(
            [self.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"])

    def log_values(self, run_id: str, **values: float) -> None:
        """Scalar metrics of the whole run."""
        now = int(time.time() * 1000)
        self.log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in values.items()])

    def log_metrics(self, run_id: str, metrics: List[Metric]) -> None:
        for i in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def run_url(self, run_id: str) -> str:
        """Where the run's pictures are in the MLflow UI (the runs view of an ML experiment)."""
        base = self.store.uri if self.store.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}/model-metrics?workflowType=machine_learning"

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri


def store_error(store: Store, e: BaseException) -> ConfigError:
    """What went wrong with the store, in one line that says what to do."""
    text = first_line(e)
    if "readonly database" in str(e) or "read-only file system" in str(e):
        return ConfigError(f"the MLflow store {store.uri} is read-only: make it writable, or set tracking.uri "
                           "to another store")
    if store.uri.startswith(("http://", "https://")):
        return ConfigError(f"the MLflow server {store.uri} does not answer ({text}): start it, or set "
                           "tracking.uri to a reachable one")
    return ConfigError(f"could not use the MLflow store {store.uri}: {text}")


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
