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
from pathlib import Path
from typing import Callable, List, Optional

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


def follow(proc: subprocess.Popen, until: Optional[Callable[[str], bool]] = None,
           seconds: float = 240) -> List[str]:
    """The lines the process prints, read as they come, up to the first that `until` accepts (or
    its end, without). A job that never gets there fails the test within `seconds`, with what
    was seen and SLURM's queue; so does a process that ends before the line `until` waits for."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = _lines(proc).get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None and until is None:
            return seen
        if line is None:
            stuck(proc, seen, "a line that never came: the process ended first")
        seen.append(line)
        if until is not None and until(line):
            return seen
    stuck(proc, seen, f"a line that never came ({seconds:.0f} s)")


def cancel_all(cwd: Path) -> None:
    """After a test, however it went: none of its SLURM jobs (those of its sweep folders) is left."""
    arrays = {p.name.split("_")[0] for p in cwd.glob("multirun/**/.submitit/*_*") if p.is_dir()}
    if arrays:
        subprocess.run(["scancel", *sorted(arrays)], capture_output=True, timeout=30)


def stuck(proc: subprocess.Popen, seen: List[str], what: str) -> None:
    squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all"], capture_output=True, text=True, timeout=30).stdout
    proc.kill()
    pytest.fail(f"waited for {what}; the process printed:\n" + "\n".join(seen) + f"\nsqueue:\n{squeue}")


def start(module: str, args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0", "MLFLOW_TRACKING_URI": ""})


# 32 px block1_conv1 iterations take ~2.3 ms here (2-CPU Xeon), so a signal sent a fifth of the way in
# lands seconds before the ascent's end. 150 iterations left 0.3 s: a cancel came after the job
# finished. 1200 left 2 s, too few for the second job while the test signalled the first.
ITERS = 4000


def sweep(args: list, cwd: Path, layer: str = "block1_conv1") -> subprocess.Popen:
    return start("filterviz", ["-m", *launcher(), f"layer={layer}", f"iters={ITERS}", f"model.weights={WEIGHTS}",
                               *args], cwd)


def running(proc: subprocess.Popen, jobs: int) -> List[str]:
    """The lines up to the one saying the last of jobs #0 .. #jobs-1 runs."""
    lines, waiting = [], {f"slurm: job #{n} running on" for n in range(jobs)}
    while waiting:
        lines += follow(proc, lambda line: any(line.startswith(w) for w in waiting))
        waiting = {w for w in waiting if not lines[-1].startswith(w)}
    return lines


def ascending(proc: subprocess.Popen, seen: List[str], cwd: Path, slurm_job: str, attempt: int = 1,
              iterations: int = 2) -> None:
    """Until the job's log has `iterations` progress lines in its `attempt`-th start: mid-ascent. A requeued job appends to its log: until its new start is written there, the lines of the
    one before are not this one's (a signal sent then, before Python's handlers, kills it outright)."""
    [log] = cwd.glob(f"multirun/*/*/.submitit/{slurm_job}") or [cwd]
    log = log / f"{slurm_job}_0_log.out"
    deadline = time.monotonic() + 120
    while True:
        starts = log.read_text().split("Starting with JobEnvironment") if log.is_file() else []
        if len(starts) > attempt and starts[attempt].count(" iteration ") >= iterations:
            return
        if time.monotonic() > deadline:
            stuck(proc, seen, f"{iterations} progress lines of start {attempt} in {log} (120 s)")
        time.sleep(0.1)


def cancel(slurm_job: str) -> None:
    """What a user does: SIGTERM now (SIGKILL KillWait later), and the job ends CANCELLED."""
    subprocess.run(["scancel", slurm_job], check=True, timeout=30)


def report(console: str, heading: str) -> List[str]:
    """The indented lines under the `error: ...` line of a failed sweep's or atlas's report."""
    lines = console.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("error: ") and heading in line]
    said = []
    for line in lines[at + 1:]:
        if not line.startswith("  "):
            break
        said.append(line)
    return said


def warn_of_time_limit(slurm_job: str) -> None:
    """What SLURM sends `signal_delay_s` before a job's time limit (and a preemption may)."""
    subprocess.run(["scancel", "--signal=USR2", slurm_job], check=True, timeout=30)


def slurm_id(lines: List[str], job: int) -> str:
    [said] = [line for line in lines if line.startswith(f"slurm: job #{job} submitted (SLURM job ")]
    return said.rsplit(" ", 1)[1].rstrip(")")


@needs_slurm
@needs_weights
def test_a_sweep_on_slurm_requeues_a_job_warned_of_its_time_limit_and_reports_a_cancelled_one_failed(tmp_path):
    proc = sweep(["input_size=32", "filters=0,1"], tmp_path)
    try:
        lines = running(proc, 2)  # both at once: one CPU each
        warned, cancelled = slurm_id(lines, 0), slurm_id(lines, 1)
        ascending(proc, lines, tmp_path, warned)
        warn_of_time_limit(warned)
        ascending(proc, lines, tmp_path, cancelled)
        cancel(cancelled)
        console = "\n".join(lines + follow(proc))  # stdout and stderr
        proc.wait(timeout=600)
    finally:
        proc.kill()
        cancel_all(tmp_path)
    # the cancelled job failed, the sweep says which in one line, and the warned one went on
    assert proc.returncode == 1, console
    for said in ("#0 submitted", "#1 submitted", "#0 running on", "#1 running on", "#0 requeued",
                 "#0 finished"):
        assert f"slurm: job {said}" in console, console
    [log] = tmp_path.glob(f"multirun/*/*/.submitit/{cancelled}/{cancelled}_0_log.err")
    assert f"slurm: job #1 failed (cancelled): see {log.resolve()}" in console.splitlines(), console
    assert "slurm: job #1 finished" not in console and "Traceback" not in console, console
    [said] = report(console, "1 job(s) of the sweep failed")
    assert said.startswith("  #1 ") and " filters=1" in said, console
    assert said.endswith(f": SLURM job {cancelled} ended, failed (cancelled); its log: {log.resolve()}"), console
    # submitit's "Bypassing sacct error" and sacct's own "accounting storage is disabled", at every
    # poll of a cluster without accounting, are not on the console
    assert "sacct" not in console and "accounting" not in console, console

    _, [parent], children = runs_of(tmp_path)
    assert parent.info.run_name == "vgg16 block1_conv1 · sweep filters=0,1"
    assert parent.info.status == "FAILED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    runs = sorted((c.info.run_name, c.info.status) for c in children)
    assert runs == [("filters=0", "FINISHED"), ("filters=0", "KILLED"), ("filters=1", "KILLED")], runs
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    # the requeued job ran again in the warned one's folder: its finished run is whole, not marked partial
    [rerun] = [c for c in children if c.info.status == "FINISHED"]
    assert "PARTIAL" not in {a.path for a in client.list_artifacts(rerun.info.run_id)}
    assert "filterviz.partial" not in rerun.data.tags
    # the warned run ended with what it had computed, and says so
    [killed] = [c for c in children if c.info.status == "KILLED" and c.info.run_name == "filters=0"]
    assert killed.data.tags["filterviz.partial"] == "true"
    local = client.download_artifacts(killed.info.run_id, "", str(tmp_path / "killed"))
    activations = np.load(f"{local}/activations.npy")
    computed = int(np.isfinite(activations[0]).sum())
    assert 0 < computed < ITERS, "stopped mid-ascent"
    kept = sorted(client.get_metric_history(killed.info.run_id, "activation/block1_conv1/f0000"), key=lambda m: m.step)
    assert [m.step for m in kept] == list(range(computed)), "every point computed, none twice"
    np.testing.assert_allclose(kept[-1].value, activations[0, computed - 1], rtol=1e-6)
    assert {"PARTIAL", "images.npy", "grid.png"} <= set(os.listdir(local))
    assert not np.allclose(np.load(f"{local}/images.npy"), 0.5), "the pictures it had reached"
    # sacct's complaints at every poll went to the sweep's launcher.err, not the console
    [launcher_err] = tmp_path.glob("multirun/*/*/.submitit/launcher.err")
    assert "accounting storage is disabled" in launcher_err.read_text()
    # each job's own log is in the sweep folder, under .submitit/<job id>/
    logs = sorted(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))
    assert [p.parent.name for p in logs] == [warned, cancelled]
    assert "MLflow run:" in logs[0].read_text() and "stopped by SIGTERM: SLURM job" in logs[1].read_text()


@needs_slurm
@needs_weights
def test_a_sweep_on_slurm_fails_a_job_past_its_requeues_and_one_killed_for_memory_saying_so(tmp_path):
    # 2048 px at block1_conv2: the first layer's 64 maps and their gradients take 2.9 GB in the first
    # step, past the job's 2 GB (a 32 px job takes ~1 GB), which slurmstepd polls every second
    # (.ci/slurm). Not block1_conv1: its step computes one map a picture (own_filter.py), 1.4 GB at 1536 px.
    proc = sweep(["hydra.launcher.max_num_timeout=1", "input_size=32,2048"], tmp_path, layer="block1_conv2")
    try:
        lines = running(proc, 1)
        timed = slurm_id(lines, 0)
        for attempt in range(2):  # requeued once (max_num_timeout=1), then it fails
            ascending(proc, lines, tmp_path, timed, attempt + 1)
            warn_of_time_limit(timed)
            if attempt == 0:
                lines += follow(proc, lambda line: line.startswith("slurm: job #0 running on"))
        console = "\n".join(lines + follow(proc))
        proc.wait(timeout=600)
    finally:
        proc.kill()
        cancel_all(tmp_path)
    assert proc.returncode == 1 and "Traceback" not in console, console
    hog = slurm_id(console.splitlines(), 1)
    [timed_log] = tmp_path.glob(f"multirun/*/*/.submitit/{timed}/{timed}_0_log.err")
    [hog_log] = tmp_path.glob(f"multirun/*/*/.submitit/{hog}/{hog}_0_log.err")
    said = console.splitlines()
    assert said.count(f"slurm: job #0 requeued (SLURM job {timed})") == 1, console
    assert f"slurm: job #0 failed: see {timed_log.resolve()}" in said, console
    assert f"slurm: job #1 failed (out of memory): see {hog_log.resolve()}" in said, console
    assert "finished" not in console and "sacct" not in console and "accounting" not in console, console
    assert "exceeded memory limit" in hog_log.read_text()  # slurmstepd's own word: killed for memory
    first, second = report(console, "2 job(s) of the sweep failed")
    assert first.startswith("  #0 ") and " input_size=32" in first, console
    assert first.endswith(": UncompletedJobError: Job not requeued because: timed-out too many times."), console
    assert second.startswith("  #1 ") and " input_size=2048" in second, console
    assert second.endswith(f": SLURM job {hog} ended, failed (out of memory); its log: {hog_log.resolve()}"), console

    _, [parent], children = runs_of(tmp_path)
    assert parent.info.status == "FAILED"
    # both attempts of the timed job ended KILLED with what they had (the hog's run never ended: SIGKILL)
    timed_runs = [c for c in children if c.info.run_name == "input_size=32"]
    assert [(c.info.status, c.data.tags.get("filterviz.partial")) for c in timed_runs] == [("KILLED", "true")] * 2


def stored_runs(uri: str, experiment: str) -> str:
    """One line per run of the experiment: name, status, whether partial, its filters and parent."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return "\n".join(f"{r.info.run_name}: {r.info.status} partial={r.data.tags.get('filterviz.partial')} "
                     f"filters={r.data.tags.get('filterviz.filters')} parent={r.data.tags.get('mlflow.parentRunId')}"
                     for r in runs)


@needs_slurm
@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: FILTERVIZ_TEST_POSTGRES_URI is unset (.ci/run starts one)")
def test_an_atlas_on_slurm_into_the_team_store_with_a_job_requeued_and_one_cancelled_resumes_to_the_in_process_atlas_images(
        small_model, uninterrupted, server, tmp_path):
    experiment = f"atlas-{uuid.uuid4().hex[:8]}"
    # whole layers a job (3 jobs): a filter's picture does not depend on the filters beside it
    args = [*atlas_args(small_model), "atlas.chunk=8", *launcher(), f"tracking.uri={server}",
            f"tracking.experiment={experiment}"]
    proc = start("filterviz.atlas", args, tmp_path)
    try:
        lines = follow(proc, lambda line: line.startswith("slurm: job #0 submitted"))
        # job #2 waits for one of the node's 2 CPUs: cancelled before it starts (a job of 10
        # iterations is done before a test could catch it mid-ascent; the sweep's test does)
        cancelled = slurm_id(lines, 0).replace("_0", "_2")
        cancel(cancelled)
        lines += follow(proc, lambda line: line.startswith("slurm: job #0 running"))
        warn_of_time_limit(slurm_id(lines, 0))  # wherever it is: starting, ascending or logging
        console = "\n".join(lines + follow(proc))
        proc.wait(timeout=600)
    finally:
        proc.kill()
        cancel_all(tmp_path)
    assert proc.returncode == 1 and "Traceback" not in console, console
    assert "slurm: job #0 requeued" in console and "accounting" not in console, console
    [folder] = tmp_path.glob(f"multirun/atlas/*/*/.submitit/{cancelled}")  # its log, had it started
    log = next(folder.glob("*_log.err"), folder).resolve()
    assert f"slurm: job #2 failed (cancelled): see {log}" in console.splitlines(), console
    assert "atlas: conv_c f0-3 failed" in console, console
    [said] = report(console, "1 job(s) of the atlas failed (run the same command again to redo them)")
    assert said == f"  conv_c f0-3: SLURM job {cancelled} ended, failed (cancelled); its log: {log}", console
    # what a rerun plans from; said if it plans otherwise (a rerun once redid conv_a, requeued, too)
    before = f"the first command:\n{console}\n\nthe store's runs after it:\n{stored_runs(server, experiment)}"

    # the same command again redoes only the cancelled job, in the same parent run
    again = start("filterviz.atlas", args, tmp_path)
    try:
        rerun = "\n".join(follow(again))
        again.wait(timeout=600)
    finally:
        again.kill()
        cancel_all(tmp_path)
    assert again.returncode == 0, rerun
    assert "1 job(s) left (4 filters; the others are done)" in rerun, f"{rerun}\n\n{before}"
    assert "slurm: job #0 finished" in rerun and "slurm: job #1" not in rerun, rerun
    assert "atlas: conv_c f0-3 done · 18/18 filters" in rerun, rerun

    client = MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("filterviz.sweep") == "atlas"]
    finished = [r for r in runs if r is not parent and r.info.status == "FINISHED"]
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in finished) == sorted({r.info.run_name for r in finished})  # once each
    assert len(finished) == 3 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in finished)
    assert pictures(site_of(rerun)) == pictures(site_of(uninterrupted[1]))
