"""Sweeps (`python -m filterviz -m ...`): one MLflow parent run, one child run per job.

The Hydra callback runs in the launching process. Before any job starts it creates the
store, the experiment and the parent run, so parallel jobs (joblib, submitit) never race
on a fresh SQLite store's schema migration; it leaves a record in the sweep folder from
which each job, in whatever process or machine, finds its parent. After the last job it
names the jobs that failed, ends the parent run, and makes the sweep exit non-zero.
"""

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from filterviz import stops
from filterviz.recording.settings import override_key, run_name

RECORD = "mlflow_sweep.json"
ERROR_FILE = "error.txt"


@dataclass
class SweepRecord:
    uri: str
    experiment: str
    parent_run_id: str
    swept_keys: List[str]

    def child_name(self, job_overrides: List[str]) -> Optional[str]:
        """The job's values of the swept keys, e.g. `layer=block3_conv1,step_size=10`."""
        return run_name(job_overrides, self.swept_keys)


def read_record(sweep_dir: Path) -> Optional[SweepRecord]:
    path = sweep_dir / RECORD
    return SweepRecord(**json.loads(path.read_text())) if path.is_file() else None


def record_failure(job_output_dir: Path, overrides: List[str], error: str) -> None:
    """A failed job leaves this for the callback to report, with or without an MLflow run."""
    job_output_dir.mkdir(parents=True, exist_ok=True)
    (job_output_dir / ERROR_FILE).write_text(" ".join(overrides) + "\n" + error + "\n")


def swept(overrides: List[str]) -> List[str]:
    """The overrides that sweep (`a=1,2`, `range(...)`, ...), as the user wrote them."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.is_sweep_override()]


_running: Optional[SweepRecord] = None  # the sweep this process launched, until it ends


def begin(sweep_dir: Path, record: SweepRecord) -> None:
    """Leave the record where the jobs find their parent, and hold it for a stop signal."""
    global _running
    (sweep_dir / RECORD).write_text(json.dumps(asdict(record)))
    _running = record


def ended() -> None:
    global _running
    _running = None


def end_stopped_sweep(stop: BaseException) -> None:
    """A stop signal reached the launching process: end its sweep's parent run KILLED."""
    if _running is not None:
        from filterviz.recording import tracking

        tracking.Tracker(tracking.Store(_running.uri, None), _running.experiment).end_parent(
            _running.parent_run_id, failed=0, stopped=str(stop))


class MlflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stops.stop_joblib_workers_too(config.hydra.launcher._target_)  # before the launcher starts them
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not config.tracking.enabled or config.get("atlas"):
            return  # an atlas keeps its own parent run (filterviz/atlas/build.py)
        from filterviz.recording import provenance, tracking  # MLflow only when tracking
        from filterviz.core.hardware import import_tensorflow_quietly

        import_tensorflow_quietly()  # provenance_tags reads its version
        sweeping = swept(list(config.hydra.overrides.task))
        # a sweeper's own search space (Optuna's hydra.sweeper.params)
        searched = config.hydra.sweeper.get("params") or {}
        sweeping += [f"{k}={v}" for k, v in searched.items()]
        keys = [override_key(o) for o in sweeping]
        tracker = tracking.Tracker(tracking.resolve_store(config.tracking.uri), config.tracking.experiment)
        command = " ".join(["python", "-m", "filterviz", *sys.argv[1:]])
        parent = tracker.start_parent(parent_name(config, keys, sweeping), {
            **provenance.provenance_tags(command), "filterviz.sweep_dir": str(sweep_dir.resolve())})
        begin(sweep_dir, SweepRecord(tracker.store.uri, config.tracking.experiment, parent, keys))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("atlas"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = sorted(sweep_dir.glob(f"*/{ERROR_FILE}"), key=lambda p: _job_order(p.parent.name))
        record = read_record(sweep_dir)
        if record is not None:
            from filterviz.recording import tracking

            tracker = tracking.Tracker(tracking.Store(record.uri, None), record.experiment)
            multirun_yaml = sweep_dir / "multirun.yaml"
            if multirun_yaml.is_file():
                tracker.client.log_artifact(record.parent_run_id, str(multirun_yaml))
            summarize(tracker, record.parent_run_id, config.optimized_metric)
            tracker.end_parent(record.parent_run_id, failed=len(failures))
            ended()
            print(f"sweep recorded as MLflow run {record.parent_run_id}; see it: {tracker.store.ui_command()}")
        if failures:
            print(f"error: {len(failures)} job(s) of the sweep failed:", file=sys.stderr)
            for path in failures:
                overrides, error = path.read_text().splitlines()[:2]
                print(f"  #{path.parent.name} {overrides}: {error}", file=sys.stderr)
            sys.exit(1)


def parent_name(config: DictConfig, swept_keys: List[str], sweeping: List[str]) -> str:
    """`vgg16 block2_conv1 · sweep step_size=0.02,0.1`: what the sweep is on, then what it sweeps."""
    lead = " ".join(str(config[k] if k != "model" else config.model.name) for k in ("model", "layer")
                    if k not in swept_keys)
    return f"{lead} · sweep {' '.join(sweeping)}" if sweeping else f"{lead} · sweep"


def summarize(tracker, parent_run_id: str, metric: str) -> None:
    """The parent's row says what the sweep held fixed (params every finished job shares) and how
    it went (the best job's `metric`, as `best/<metric>`, and that job in tag filterviz.best_run)."""
    children = tracker.finished_children(parent_run_id)
    if not children:
        return
    shared = dict(children[0].data.params)
    for child in children[1:]:
        shared = {k: v for k, v in shared.items() if child.data.params.get(k) == v}
    tracker.log_params(parent_run_id, shared)
    scored = [c for c in children if metric in c.data.metrics]
    if scored:
        best = max(scored, key=lambda c: c.data.metrics[metric])
        tracker.client.set_tag(parent_run_id, "filterviz.best_run", f"{best.info.run_name} ({best.info.run_id})")
        tracker.log_values(parent_run_id, **{f"best/{metric}": best.data.metrics[metric]})


def _job_order(name: str) -> tuple:
    return (0, int(name)) if name.isdigit() else (1, name)
