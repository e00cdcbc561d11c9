"""Hydra's submitit SLURM launcher, telling the user what each job is doing.

The launching process only waits on its jobs, and submitit's polling of `sacct` writes
"Slurm accounting storage is disabled" to the terminal at every poll on a cluster without
accounting. So while it waits, the process's own stderr goes to `.submitit/launcher.err`, and a
thread prints one line per job and change instead: submitted (SLURM id), running (node),
requeued, finished or failed (with its log). Kept thin: submitit itself does the work.
"""

import os
import pickle
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from filterviz.recording.sweep import ERROR_FILE, record_failure

POLL_SECONDS = 5.0
# SLURM's end states of a job that did not complete (COMPLETED: submitit's result says how it went)
ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "past its time limit", "FAILED": "", "OUT_OF_MEMORY": "out of memory",
         "NODE_FAIL": "its node failed", "BOOT_FAIL": "its node did not boot", "DEADLINE": "past its deadline"}
# What slurmstepd writes to a job's log when it kills the job for memory: its accounting poll
# (JobAcctGatherParams=OverMemoryKill, where the job then ends FAILED, not OUT_OF_MEMORY) or cgroup's
MEMORY_KILL = re.compile(r"exceeded (job )?memory limit|oom[-_ ]kill event", re.IGNORECASE)


class ReportingSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        folder = Path(str(self.params["submitit_folder"])).parent  # <sweep dir>/.submitit/%j
        folder.mkdir(parents=True, exist_ok=True)
        watcher = JobWatcher(folder, Path(str(self.config.hydra.sweep.dir)), initial_job_idx, job_overrides)
        with _stderr_to(folder / "launcher.err"), watcher:
            return super().launch(job_overrides, initial_job_idx)


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """fd 2 (ours and our subprocesses', i.e. sacct's) into a file, for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class JobWatcher:
    """Polls squeue for the jobs submitit put in `folder` and prints their changes."""

    def __init__(self, folder: Path, sweep_dir: Path, first: int, overrides: Sequence[Sequence[str]]):
        self.folder, self.sweep_dir, self.first, self.overrides = folder, sweep_dir, first, overrides
        self.seen: Dict[str, str] = {}  # SLURM id (array_index) -> last state printed
        self.done = threading.Event()

    def __enter__(self) -> "JobWatcher":
        self.started = set(self.folder.iterdir())  # earlier batches' job folders are not ours
        self.thread = threading.Thread(target=self._run, name="slurm-jobs", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self._poll(final=True)

    def _run(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            try:
                self._poll()
            except Exception as e:  # never let a report stop the jobs
                print(f"slurm: cannot read the queue ({e})", flush=True)

    def _jobs(self) -> List[str]:
        return sorted((p.name for p in self.folder.iterdir() if p not in self.started and p.is_dir()
                       and any(p.glob("*_submitted.pkl"))), key=_index)

    def _poll(self, final: bool = False) -> None:
        """`final`: every job has its result (the queue may not say so yet)."""
        jobs = self._jobs()
        if not jobs:
            return
        queue = _queue({j.split("_")[0] for j in jobs})
        for job in jobs:
            state, node = queue.get(job, ("", ""))
            before, number = self.seen.get(job), self.first + _index(job)
            if state.startswith("REQUEUE"):
                state = "PENDING"
            elif state == "COMPLETED":
                state = self._outcome(job)  # None until submitit has written the result
            elif state in ENDED and str(before).startswith(("finished", "failed")):
                continue  # said already (and its result may be the one _vanished wrote)
            elif state in ENDED:
                # a result written before SLURM ended the job (cancelled as it finished) says how it went
                state = self._outcome(job) or (
                    "failed (out of memory)" if state == "FAILED" and self._killed_for_memory(job) else
                    f"failed ({ENDED[state]})" if ENDED[state] else "failed")
            if final and not str(before).startswith(("finished", "failed")):
                state = self._outcome(job) or state
            if state is None or state == before or state in ("", "COMPLETING", "PREEMPTED"):
                continue  # PREEMPTED: requeued next, or failed
            if state == "PENDING":
                said = "requeued" if before == "RUNNING" else "submitted"
                print(f"slurm: job #{number} {said} (SLURM job {job})", flush=True)
            elif state == "RUNNING":
                if before is None:
                    print(f"slurm: job #{number} submitted (SLURM job {job})", flush=True)
                print(f"slurm: job #{number} running on {node}", flush=True)
            elif state == "finished" and not (self.sweep_dir / str(number) / ERROR_FILE).is_file():
                print(f"slurm: job #{number} finished", flush=True)
            elif state == "finished":  # the job caught its own error (the sweep's report says which)
                print(f"slurm: job #{number} failed: see {self._log(job)}", flush=True)
            else:
                print(f"slurm: job #{number} {state}: see {self._log(job)}", flush=True)
                self._vanished(job, number, state)
            self.seen[job] = state

    def _vanished(self, job: str, number: int, state: str) -> None:
        """SLURM ended the job before it wrote its result (cancelled, out of memory, ...). Without
        sacct, submitit would wait for that result for ever (with sacct it would fail the whole
        sweep): give it one that says the job failed, and record the failure where the sweep's
        and the atlas's reports look for it, so the others finish and a rerun redoes this one."""
        submitted = next((self.folder / job).glob("*_submitted.pkl"), None)
        result = self.folder / job / f"{job}_0_result.pkl"
        if submitted is None or result.exists():
            return
        overrides = list(self.overrides[number - self.first])
        record_failure(self.sweep_dir / str(number), overrides,
                       f"SLURM job {job} ended, {state}; its log: {self._log(job)}")
        temporary = result.with_suffix(".tmp")
        with open(temporary, "wb") as f:
            pickle.dump(("success", JobReturn(overrides=overrides, status=JobStatus.COMPLETED,
                                              _return_value=float("nan"))), f)
        temporary.rename(result)

    def _outcome(self, job: str):
        """finished / failed from the result submitit writes at the end of a job, else None."""
        results = list((self.folder / job).glob("*_result.pkl"))
        if not results:
            return None
        try:
            with open(results[0], "rb") as f:
                outcome = pickle.load(f)[0]
        except Exception:
            return "failed"
        return "finished" if outcome == "success" else "failed"

    def _killed_for_memory(self, job: str) -> bool:
        log = self._log(job)
        try:
            with open(log, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))  # slurmstepd's last words
                return bool(MEMORY_KILL.search(f.read().decode(errors="replace")))
        except OSError:  # no log (yet): a folder, or gone
            return False

    def _log(self, job: str) -> Path:
        logs = sorted((self.folder / job).glob("*_log.err"))
        return (logs[0] if logs else self.folder / job).resolve()


def _index(job: str) -> int:
    return int(job.split("_")[1]) if "_" in job else 0


def _queue(arrays) -> Dict[str, tuple]:
    """SLURM id -> (state, node) of every task of these array jobs the controller still knows."""
    shown = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T %N", "-j", ",".join(sorted(arrays))],
                           capture_output=True, text=True, timeout=60)
    rows = (line.split() for line in shown.stdout.splitlines())
    return {row[0]: (row[1], row[2] if len(row) > 2 else "") for row in rows if len(row) >= 2}
