"""Stop signals: SIGINT (Ctrl-C), SIGTERM (kill, a SLURM time limit or preemption) and SIGHUP
(a closed terminal) each become a `Stopped` exception in the main thread, so the job can end
its run KILLED with what it computed, and the process can exit with 128 + the signal.

The first signal stops cleanly; the same signal again within a few seconds is taken as the
same stop (a terminal and a parent process may both send it), and later as "stop at once".
Inside `deferred()` the first signal waits for the block's end, so bookkeeping that must happen
whole (a step's point in the file and in the stream) is never cut in half.

A parallel sweep's workers (joblib's, submitit-local's) run jobs without `main()`: `in_worker()`
gives each job the same stop, and the launching process, passing a signal on to its workers,
waits until each says (by its process name) that its run has ended: once the launcher sees the
stop it kills its workers outright, as joblib's also does when one of them exits. So a stopped
worker stays alive, idle, until then.
"""

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

from filterviz.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAME_STOP_SECONDS = 3.0
WORKERS_END_SECONDS = 120.0  # a worker's run ending KILLED writes its partial results and waits on the store
ENDED = "filterviz-ended"  # a stopped worker's process name once its run has ended (15 characters at most)
_stopping_since: Optional[float] = None
_deferring = 0  # depth of deferred() blocks
_deferred: Optional[int] = None  # the first signal, arrived inside one, raised at its end
_worker = False  # this process is a joblib worker (in_worker)
_in_job = False


def _on_signal(signum: int, frame) -> None:
    global _stopping_since, _deferred
    now = time.monotonic()
    if _stopping_since is None:
        _stopping_since = now
        _wait_for_workers(_forward(signum), signum)
        if _worker and not _in_job:
            _idle_until_killed(128 + signum)
        if _deferring:
            _deferred = signum
            return
        raise Stopped(signum)
    if now - _stopping_since < SAME_STOP_SECONDS:
        return  # the same stop, sent twice (by the terminal and by a parent process, say)
    signal.signal(signum, signal.SIG_DFL)  # asked again: stop at once
    os.kill(os.getpid(), signum)


# The command lines of the workers Hydra's launchers start for our jobs: joblib's (loky), and the
# controller of submitit's local jobs (it passes the signal on to its job). Other children (a
# notebook's, a test runner's browser) are not ours to stop.
JOB_WORKERS = ("joblib.externals.loky.backend.popen_loky_posix", "submitit.local._local")


def _forward(signum: int) -> List[int]:
    """Pass the signal on to our job workers (a joblib sweep's), so their runs end too; their pids."""
    me, told = str(os.getpid()), []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid != me:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
            if any(worker in command for worker in JOB_WORKERS):
                os.kill(int(entry.name), signum)
                told.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return told


def _wait_for_workers(pids: List[int], signum: int) -> None:
    if not pids:
        return
    print(f"stopped by {signal.Signals(signum).name}: waiting for {len(pids)} job worker(s) to end their runs "
          "(the same signal again stops at once)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + WORKERS_END_SECONDS
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if _ending(pid)]


def _ending(pid: int) -> bool:
    """Still ending its run: alive (not a zombie, which its launcher reaps) and not yet named ENDED.
    A worker between jobs, or one whose job had already finished, ends at once."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            name, state = f.read().rsplit(")", 1)
        return state.split()[0] not in ("Z", "X") and name.split("(", 1)[1] != ENDED
    except (OSError, IndexError):
        return False


@contextmanager
def deferred() -> Iterator[None]:
    """A block the first stop signal does not cut: it is raised as `Stopped` when the block ends.
    (A second signal still stops at once, as everywhere.)"""
    global _deferring, _deferred
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _deferred is not None:
            signum, _deferred = _deferred, None
            raise Stopped(signum)


@contextmanager
def stop_on_signals(extra: Tuple[int, ...] = ()) -> Iterator[None]:
    """`extra`: more signals that stop (a cluster's time-limit warning, cluster.py)."""
    global _stopping_since, _deferred
    _stopping_since, _deferred = None, None
    previous = {s: signal.signal(s, _on_signal) for s in (*SIGNALS, *extra)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def in_worker() -> Iterator[None]:
    """Around a job. In a joblib worker process, which has no stop handling of its own, stop
    signals end the job's run as `main()` does, and from then on the worker stays idle until its
    launcher kills it (a signal between jobs idles it at once). Elsewhere, nothing: `main()`, the
    Python API or a submitit job (cluster.requeue_when_stopped) already stop on signals."""
    global _worker, _in_job, _stopping_since
    if not _worker:
        if (signal.getsignal(signal.SIGTERM) is _on_signal or "SUBMITIT_FOLDER" in os.environ
                or threading.current_thread() is not threading.main_thread()):
            yield
            return
        _worker = True  # for the worker's whole life: a stop between jobs must not kill it (see above)
        for s in SIGNALS:
            signal.signal(s, _on_signal)
    _stopping_since, _in_job = None, True
    try:
        yield
    except Stopped as stop:
        sys.stdout.flush()
        sys.stderr.flush()
        _idle_until_killed(stop.exit_code)
    finally:
        _in_job = False


def _idle_until_killed(exit_code: int) -> None:
    """A stopped worker whose run has ended: it says so, then neither exits (joblib would kill the
    workers still ending theirs) nor takes another job. Its launcher kills it; if the launcher
    died first, or never does, it exits."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(ENDED)
    except OSError:
        pass  # no /proc: nothing waits on this worker either (_forward found none)
    parent, deadline = os.getppid(), time.monotonic() + 2 * WORKERS_END_SECONDS
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(exit_code)
