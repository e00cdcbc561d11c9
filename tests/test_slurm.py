"""A sweep through SLURM (`hydra/launcher=slurm`), on the one-node cluster `.ci/slurm` starts.

Skips, saying why, where SLURM's commands are absent or no node answers; `.ci/run` exports
FILTERVIZ_TEST_SLURM_PARTITION (the partition .ci/slurm printed) where it started one.
"""

import os
import queue
import shutil
import threading
import subprocess
import sys
import time
import uuid
from typing import Callable, List

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from atlases import atlas_args, pictures, site_of
from conftest import WEIGHTS, needs_weights
from test_sweep import runs_of
from test_team_store import POSTGRES, server, server_process  # noqa: F401 (fixtures)

PARTITION = os.environ.get("FILTERVIZ_TEST_SLURM_PARTITION", "")


def cluster_problem():
    """Why no job can run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM's commands (sinfo, sbatch) are not installed (.ci/slurm starts a one-node cluster)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T", *(["-p", PARTITION] if PARTITION else [])],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s: is slurmctld running? (.ci/slurm starts it)"
    states = proc.stdout.split()
    up = ("idle", "mixed", "allocated", "completing")  # busy nodes take jobs later; down, drained do not
    if proc.returncode != 0 or not any(s.rstrip("*~#!%$@^-+") in up for s in states):
        where = f"partition {PARTITION!r}" if PARTITION else "the cluster"
        said = (proc.stderr.strip() or " ".join(states) or f"{where} has no nodes").splitlines()[0]
        return f"no SLURM node is up to take jobs ({said}); .ci/slurm starts a one-node cluster"
    return None


needs_slurm = pytest.mark.skipif(cluster_problem() is not None, reason=str(cluster_problem()))


def launcher() -> list:
    """One CPU and 2 GB a job fit any node; stores and sweep folders in tmp_path, which jobs on
    this node see."""
    return ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=10", *([f"hydra.launcher.partition={PARTITION}"] if PARTITION else [])]


def _lines(proc: subprocess.Popen) -> "queue.Queue":
    """The process's output lines as a thread reads them (None at the end), one reader per process."""
    if not hasattr(proc, "lines"):
        proc.lines = queue.Queue()
        threading.Thread(target=lambda: [proc.lines.put(line.rstrip("\n")) for line in proc.stdout]
                         + [proc.lines.put(None)], daemon=True).start()
    return proc.lines


def follow(proc: subprocess.Popen, until: Callable[[str], bool] = lambda line: False,
           seconds: float = 240) -> List[str]:
    """The lines the process prints, read as they come, up to the first that `until` accepts (or
    its end, with the default). A job that never gets there fails the test within `seconds`, with
    what was seen and SLURM's queue."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = _lines(proc).get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            return seen
        seen.append(line)
        if until(line):
            return seen
    squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all"], capture_output=True, text=True, timeout=30).stdout
    proc.kill()
    pytest.fail(f"waited {seconds:.0f} s for a line that never came; the process printed:\n" + "\n".join(seen)
                + f"\nsqueue:\n{squeue}")


def warn_of_time_limit(slurm_job: str) -> None:
    """What SLURM sends `signal_delay_s` before a job's time limit (and a preemption may)."""
    subprocess.run(["scancel", "--signal=USR2", slurm_job], check=True, timeout=30)


def slurm_id(lines: List[str], job: int) -> str:
    [said] = [line for line in lines if line.startswith(f"slurm: job #{job} submitted (SLURM job ")]
    return said.rsplit(" ", 1)[1].rstrip(")")


@needs_slurm
@needs_weights
def test_a_sweep_on_slurm_requeues_a_job_warned_of_its_time_limit_and_finishes_quietly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "filterviz", "-m", *launcher(), "filters=0,1", "layer=block1_conv1", "iters=150",
         "input_size=32", f"model.weights={WEIGHTS}"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0", "MLFLOW_TRACKING_URI": ""})
    try:
        lines = follow(proc, lambda line: line.startswith("slurm: job #0 running"))
        job = slurm_id(lines, 0)
        log = next(tmp_path.glob(f"multirun/*/*/.submitit/{job}/{job}_0_log.out"))
        for _ in range(1200):  # mid-ascent: its progress lines are in its log
            if log.read_text().count(" iteration ") >= 2:
                break
            time.sleep(0.1)
        warn_of_time_limit(job)
        console = "\n".join(lines + follow(proc))  # stdout and stderr
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, console
    for said in ("#0 submitted", "#1 submitted", "#0 running on", "#1 running on", "#0 requeued",
                 "#0 finished", "#1 finished"):
        assert f"slurm: job {said}" in console, console
    # submitit's "Bypassing sacct error" and sacct's own "accounting storage is disabled", at every
    # poll of a cluster without accounting, are not on the console
    assert "sacct" not in console and "accounting" not in console, console

    _, [parent], children = runs_of(tmp_path)
    assert parent.info.run_name == "vgg16 block1_conv1 · sweep filters=0,1"
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    runs = sorted((c.info.run_name, c.info.status) for c in children)
    assert runs == [("filters=0", "FINISHED"), ("filters=0", "KILLED"), ("filters=1", "FINISHED")], runs
    # the warned run ended with what it had computed, and says so
    [killed] = [c for c in children if c.info.status == "KILLED"]
    assert killed.data.tags["filterviz.partial"] == "true"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    local = client.download_artifacts(killed.info.run_id, "", str(tmp_path / "killed"))
    activations = np.load(f"{local}/activations.npy")
    computed = int(np.isfinite(activations[0]).sum())
    assert 0 < computed < 150, "stopped mid-ascent"
    kept = sorted(client.get_metric_history(killed.info.run_id, "activation/block1_conv1/f0000"), key=lambda m: m.step)
    assert [m.step for m in kept] == list(range(computed)), "every point computed, none twice"
    np.testing.assert_allclose(kept[-1].value, activations[0, computed - 1], rtol=1e-6)
    assert {"PARTIAL", "images.npy", "grid.png"} <= set(os.listdir(local))
    assert not np.allclose(np.load(f"{local}/images.npy"), 0.5), "the pictures it had reached"
    # sacct's complaints at every poll went to the sweep's launcher.err, not the console
    [launcher_err] = tmp_path.glob("multirun/*/*/.submitit/launcher.err")
    assert "accounting storage is disabled" in launcher_err.read_text()
    # each job's own log is in the sweep folder, under .submitit/<job id>/
    logs = list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2 and all("MLflow run:" in p.read_text() for p in logs)


@needs_slurm
@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: FILTERVIZ_TEST_POSTGRES_URI is unset (.ci/run starts one)")
def test_an_atlas_on_slurm_into_the_team_store_requeued_mid_way_has_the_in_process_atlas_images(
        small_model, uninterrupted, server, tmp_path):
    experiment = f"atlas-{uuid.uuid4().hex[:8]}"
    # whole layers a job (3 jobs): a filter's picture does not depend on the filters beside it
    args = [*atlas_args(small_model), "atlas.chunk=8", *launcher(), f"tracking.uri={server}",
            f"tracking.experiment={experiment}"]
    proc = subprocess.Popen([sys.executable, "-m", "filterviz.atlas", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0", "MLFLOW_TRACKING_URI": ""})
    try:
        lines = follow(proc, lambda line: line.startswith("slurm: job #0 running"))
        warn_of_time_limit(slurm_id(lines, 0))  # wherever it is: starting, ascending or logging
        console = "\n".join(lines + follow(proc))
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, console
    assert "slurm: job #0 requeued" in console and "accounting" not in console, console

    client = MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("filterviz.sweep") == "atlas"]
    finished = [r for r in runs if r is not parent and r.info.status == "FINISHED"]
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in finished) == sorted({r.info.run_name for r in finished})  # once each
    assert len(finished) == 3 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in finished)
    assert pictures(site_of(console)) == pictures(site_of(uninterrupted[1]))

