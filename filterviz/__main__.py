"""`python -m filterviz key=value ...`: the Hydra entry point, kept thin."""

import gc
import os

if __name__ == "__main__":  # the command, not a module imported by a library, a test or a worker
    # No garbage collection while the imports build half a million objects that live as long as
    # the process: each full collection walks them all (importing tensorflow, keras and mlflow:
    # 4.6 s with it, 3.5 s without, on the 2-CPU EPYC). task() freezes them out of later
    # collections and turns it back on.
    gc.disable()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ chatter (e.g. "no CUDA driver")

import logging  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, List, Optional  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from filterviz.cluster import requeue_when_stopped  # noqa: E402
from filterviz.core.applications import APPLICATIONS  # noqa: E402
from filterviz.config import check_ranges, register_configs  # noqa: E402
from filterviz.core.hardware import import_tensorflow_quietly  # noqa: E402
from filterviz.core import hardware  # noqa: E402
from filterviz.errors import ConfigError, Stopped, first_line  # noqa: E402
from filterviz.stops import in_worker, stop_on_signals  # noqa: E402

register_configs()


def register_plugins() -> None:
    """Hydra finds plugins by scanning the hydra_plugins folders on sys.path, which an editable
    install does not put there: register ours by hand."""
    from hydra.core.plugins import Plugins

    try:
        from hydra_plugins.filterviz_slurm.slurm_launcher import ReportingSlurmLauncher
    except ImportError:
        return  # the `sweep` extra (hydra-submitit-launcher) is not installed
    Plugins.instance().register(ReportingSlurmLauncher)


register_plugins()
CONFIG_PACKAGES = ("filterviz.conf", "filterviz.experiments")  # Hydra's search path, as packages


def unknown_group_choice(overrides: List[str]) -> Optional[str]:
    """Hydra reports an unknown config-group option over several lines; say it in one."""
    roots = [resources.files(package) for package in CONFIG_PACKAGES]
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        groups = [root / key for root in roots if key.isidentifier() and (root / key).is_dir()]
        if not sep or not groups or "(" in value:
            continue  # not a group of ours, or a sweep function Hydra will expand
        options = sorted({p.name[: -len(".yaml")] for g in groups for p in g.iterdir() if p.name.endswith(".yaml")}
                         | (set(APPLICATIONS) if key == "model" else set()))
        for choice in value.split(","):
            if choice == "null":  # Hydra 1.3 fails on it with a traceback
                return f"{key}=null is not an option: to drop the default {key}, write ~{key}"
            if choice not in options:
                return f"unknown {key} {choice!r}: use one of {', '.join(options)}"
    return None


def main(app: Optional[Callable[[], None]] = None) -> None:
    """Run a Hydra app (by default the run's) with stop signals turned into ended runs."""
    from filterviz.recording.folders import output_problem

    problem = unknown_group_choice(sys.argv[1:]) or output_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        with stop_on_signals():
            (app or hydra_main)()
    except Stopped as stop:
        from filterviz.recording import sweep

        sweep.end_stopped_sweep(stop)  # a sweep in this process: its parent run ends KILLED too
        sys.exit(stop.exit_code)


def end_at_once() -> None:
    """End a finished run without Python's teardown. By now every point, picture and file is
    in the store (each run waits for its MLflow writes before it returns), and the teardown only
    waits: ~1 s for MLflow's idle async-logging threads, ~2 s for TensorFlow's (experiments/startup.py)."""
    logging.shutdown()  # Hydra's log file
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_gpu_chosen = False  # a worker process keeps the GPU of its first job: CUDA reads the choice once


def spread_over_gpus(job_number: int, launcher: str) -> None:
    """A local launcher's parallel jobs on a node with several GPUs: each on its own, by job number."""
    global _gpu_chosen
    if _gpu_chosen:
        return
    _gpu_chosen = True
    gpu = hardware.gpu_for_job(job_number, launcher)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def task(cfg: DictConfig) -> float:
    """One job; returns its figure named by `optimized_metric`, which an Optuna sweeper maximises."""
    with in_worker():  # in a joblib worker a stop ends the job as main() does, from the job's first line
        return _task(cfg)


def _task(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:  # first: nothing may have asked TensorFlow for a GPU yet
        spread_over_gpus(hydra_cfg.job.num, hydra_cfg.launcher._target_)
    try:
        check_ranges(cfg)  # before the slow import of TensorFlow
    except ConfigError as e:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    import_tensorflow_quietly()  # here, after Hydra has parsed the command line
    from filterviz import job
    from filterviz.recording import sweep

    if not gc.isenabled():  # the first job of this process (an atlas runs many: later ones have garbage)
        gc.freeze()  # what the imports left unreachable (~4,000 objects, ~1 MB) is never collected: cheaper
        gc.enable()

    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    record = sweep.read_record(Path(hydra_cfg.sweep.dir)) if hydra_cfg.mode == RunMode.MULTIRUN else None
    command = shlex.join(["python", "-m", "filterviz", *overrides]) if record else \
        shlex.join(["python", "-m", "filterviz", *sys.argv[1:]])
    try:
        with requeue_when_stopped():  # a SLURM job: a time limit or a preemption requeues it
            result = job.run(cfg, output_dir, overrides, command, record and record.parent_run_id,
                             record and record.child_name(overrides))
    except Exception as e:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(e, ConfigError):
                print(f"error: {e}", file=sys.stderr)
                sys.exit(1)
            raise
        # In a sweep one job's failure must not stop the others: record it for the report.
        error = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {first_line(e)}"
        print(f"error: job #{hydra_cfg.job.num}: {error}", file=sys.stderr)
        sweep.record_failure(output_dir, overrides, error)
        return float("nan")  # an Optuna sweeper counts the trial as failed
    if cfg.get("atlas"):
        return result.figures[cfg.optimized_metric]  # the atlas prints a line per job
    print(f"images: {result.results_dir}")
    if result.run_id:
        print(f"MLflow run: {result.run_id}  (artifacts: {result.artifact_uri})")
        print(f"see it:     {result.ui_command}")
        print(f"            then open {result.run_url}")
    return result.figures[cfg.optimized_metric]


hydra_main = hydra.main(version_base="1.3", config_path="pkg://filterviz.conf", config_name="config")(task)


if __name__ == "__main__":
    main()
    if not {"-m", "--multirun"} & set(sys.argv):  # a sweep's launcher may still own worker processes
        end_at_once()
