"""A sweep through SLURM (`hydra/launcher=slurm`), on the one-node cluster `.ci/slurm` starts.

Skips, saying why, where SLURM's commands are absent or no node answers; `.ci/run` exports
FILTERVIZ_TEST_SLURM_PARTITION (the partition .ci/slurm printed) where it started one.
"""

import os
import shutil
import subprocess

import pytest

from conftest import WEIGHTS, needs_weights, run_cli
from test_sweep import SMALL, runs_of

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


@needs_slurm
@needs_weights
def test_a_sweep_through_slurm_records_both_jobs_under_a_finished_parent_quietly(tmp_path):
    # One CPU and 2 GB a job fit any node; the store is in tmp_path, which jobs on this node see.
    launcher = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                "hydra.launcher.timeout_min=5"]
    if PARTITION:
        launcher.append(f"hydra.launcher.partition={PARTITION}")
    proc = run_cli("-m", *launcher, "filters=0,1", *SMALL, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr
    _, [parent], children = runs_of(tmp_path)
    assert parent.info.run_name == "vgg16 block1_conv1 · sweep filters=0,1"
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["filters=0", "filters=1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert len(child.data.metrics) > 0
    # submitit's "Bypassing sacct error" at every poll of a cluster without accounting is silenced
    console = proc.stdout + proc.stderr
    assert "sacct" not in console, console
    # each job's own log is in the sweep folder, under .submitit/<job id>/
    logs = list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2 and all("MLflow run:" in p.read_text() for p in logs)
