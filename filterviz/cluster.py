"""A job on a SLURM cluster (Hydra's submitit launcher): a time limit or a preemption ends the
run KILLED with what it computed, then the job is requeued and runs again.

SLURM warns a job `hydra.launcher.signal_delay_s` before its time limit with submitit's signal
(SIGUSR2), and a preemption sends SIGTERM. submitit alone would requeue at once (its SIGUSR2
handler) or ignore the signal (SIGTERM), leaving our run RUNNING until its owner check reaps
it. Here both become `Stopped` (stops.py), the run ends KILLED with its images so far, and
then submitit's own handler checkpoints and requeues the job (Hydra's `max_num_timeout`
bounds requeues after time limits). A SIGTERM from `scancel` (the user cancelled) or from
SLURM's own `scontrol requeue` (SLURM requeues it itself) is not requeued again.
"""

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from filterviz.errors import Stopped
from filterviz.stops import stop_on_signals

def submitit_signal() -> Optional[signal.Signals]:
    """The signal submitit asked SLURM to send before a time limit, in a submitit job; else None."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


def slurm_state() -> str:
    """This SLURM job's state as the controller sees it ("" if it cannot say)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # an array's last task has the array's id as its own, and scontrol then shows every task of
    # the array, one line each: this job's line only
    for line in shown.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("JobId") == job:
            return fields.get("JobState", "")
    return ""


@contextmanager
def requeue_when_stopped() -> Iterator[None]:
    """Around one job: outside a submitit job, nothing; inside, stop signals end the run, and a
    time limit or a preemption then requeues the job through submitit."""
    usr = submitit_signal()
    if usr is None:
        yield
        return
    if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        _forget_stopped_attempt()
    requeue = signal.getsignal(usr)  # submitit's checkpoint_and_try_requeue
    with stop_on_signals(extra=(usr,)):
        try:
            yield
        except Stopped as stop:
            # a local job inside a SLURM allocation inherits its SLURM_JOB_ID: it is still local
            local = os.environ.get("SUBMITIT_EXECUTOR") == "local" or "SLURM_JOB_ID" not in os.environ
            job = "submitit's local job" if local else f"SLURM job {os.environ['SLURM_JOB_ID']}"
            # a run the stop reached as it ended is complete in the store: run again, it would be twice there
            if stop.finished is None and stop.signum in (usr, signal.SIGTERM) and callable(requeue) and (
                    stop.signum == usr or (not local and slurm_state() == "RUNNING")):
                print(f"{stop}: requeueing this job ({job})", flush=True)
                requeue(usr, None)  # requeues and exits; raises if it will not (too many time limits)
            # cancelled, or SLURM requeues the job itself: end here, without a result for submitit
            print(f"{stop}: {job} ends here", flush=True)
            sys.exit(stop.exit_code)


def _forget_stopped_attempt() -> None:
    """A requeued job runs again in its stopped attempt's folder: every file but the marker of a
    stopped ascent is written again, so drop that marker, else the finished run carries it."""
    from hydra.core.hydra_config import HydraConfig

    from filterviz.recording.files import PARTIAL

    try:
        marker = Path(HydraConfig.get().runtime.output_dir) / "results" / PARTIAL
    except ValueError:  # not a Hydra job
        return
    marker.unlink(missing_ok=True)
