"""Stop signals: SIGINT (Ctrl-C), SIGTERM (kill, a SLURM time limit or preemption) and SIGHUP
(a closed terminal) each become a `Stopped` exception in the main thread, so the job can end
its run KILLED with what it computed, and the process can exit with 128 + the signal.

The first signal stops cleanly; the same signal again within a few seconds is taken as the
same stop (a terminal and a parent process may both send it), and later as "stop at once".
Inside `deferred()` the first signal waits for the block's end, so bookkeeping that must happen
whole (a step's point in the file and in the stream) is never cut in half.

A parallel sweep's launching process passes the signal on to its workers that run a job
(joblib's, and the controllers of submitit's local jobs) and waits until each has ended its run:
once the launcher sees the stop it kills its workers outright. joblib's workers run jobs without
`main()`: each takes the same stop handling as it starts (`stop_joblib_workers_too`), and
`in_worker()` names the process after where it is (in a job, between jobs, ended). A stopped
worker stays alive, idle, since joblib kills every worker as soon as one exits: a terminal's
Ctrl-C reaches every worker, those with no job too. A submitit job stops through
cluster.requeue_when_stopped, and exits.
"""

import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Set, Tuple

from filterviz.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAME_STOP_SECONDS = 3.0
WORKERS_END_SECONDS = 120.0  # a worker's run ending KILLED writes its partial results and waits on the store
# a joblib worker's process name (15 characters at most): in a job, between jobs, stopped with its run ended
IN_JOB, BETWEEN_JOBS, ENDED = "filterviz-job", "filterviz-idle", "filterviz-ended"
_stopping_since: Optional[float] = None
_deferred: Optional[int] = None  # the first signal, arrived inside a deferred() block, raised at its end
_waiting: List[str] = []  # one entry per open deferred() block: what it waits for, to say when a stop arrives
_worker = False  # this process is a joblib worker (started by _start_joblib_worker)
_in_job = False
_loky = None  # joblib's own loky backend, while stop_joblib_workers_too has replaced it


def _on_signal(signum: int, frame) -> None:
    global _stopping_since, _deferred
    now = time.monotonic()
    if _stopping_since is None:
        _stopping_since = now
        _wait_for_workers(_forward(signum), signum)
        if _worker and not _in_job:
            _idle_until_killed(128 + signum)
        if _waiting:
            _deferred = signum
            said = [w for w in _waiting if w]
            if said:
                _say(f"stopped by {signal.Signals(signum).name}: {said[-1]} (the same signal again stops at once)")
            return
        raise Stopped(signum)
    if now - _stopping_since < SAME_STOP_SECONDS:
        return  # the same stop, sent twice (by the terminal and by a parent process, say)
    signal.signal(signum, signal.SIG_DFL)  # asked again: stop at once
    os.kill(os.getpid(), signum)


# The command line of the process that runs one of submitit's local jobs and passes signals on to it.
SUBMITIT_LOCAL = "submitit.local._local"


def _forward(signum: int, told: Set[int] = frozenset()) -> Set[int]:
    """Pass the signal on to our workers in a job (other than those `told`), so their runs end
    too; their pids. Other children (a notebook kernel's, a test runner's browser) are not ours
    to stop. submitit's controller passes on SIGTERM only: it is sent that."""
    me, now = str(os.getpid()), set()
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit() or int(entry.name) in told:
            continue
        try:
            name, _, ppid = _stat(entry.name)
            if ppid != me:
                continue
            if name == IN_JOB:
                os.kill(int(entry.name), signum)
                now.add(int(entry.name))
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if SUBMITIT_LOCAL in f.read().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGTERM)
                    now.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return now


def _stat(pid) -> Tuple[str, str, str]:
    """A process's name, state (R, S, Z ...) and parent's pid, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        head, tail = f.read().rsplit(")", 1)
    state, ppid = tail.split()[:2]
    return head.split("(", 1)[1], state, ppid


def _wait_for_workers(told: Set[int], signum: int) -> None:
    if not told:
        return
    _say(f"stopped by {signal.Signals(signum).name}: waiting for {len(told)} job worker(s) to end their runs "
         "(the same signal again stops at once)")
    ending, deadline = set(told), time.monotonic() + WORKERS_END_SECONDS
    while ending and time.monotonic() < deadline:
        time.sleep(0.1)
        # joblib may hand a queued job to a worker meanwhile (its threads run on): it is told too
        new = _forward(signum, told)
        told |= new
        ending = {pid for pid in ending | new if _ending(pid)}


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # a closed terminal (SIGHUP): the stop goes on without its line


def _ending(pid: int) -> bool:
    """Still ending its run: alive (not a zombie, which its launcher reaps) and not yet named ENDED."""
    try:
        name, state, _ = _stat(pid)
    except (OSError, IndexError, ValueError):
        return False
    return state not in ("Z", "X") and name != ENDED


@contextmanager
def deferred(waiting: str = "") -> Iterator[None]:
    """A block the first stop signal does not cut: it is raised as `Stopped` when the block ends.
    (A second signal still stops at once, as everywhere.) `waiting`: what the stop waits for, said
    when it arrives, for a block that can take seconds."""
    global _deferred
    _waiting.append(waiting)
    try:
        yield
    finally:
        _waiting.pop()
        if not _waiting and _deferred is not None:
            signum, _deferred = _deferred, None
            raise Stopped(signum)


@contextmanager
def stop_on_signals(extra: Tuple[int, ...] = ()) -> Iterator[None]:
    """`extra`: more signals that stop (a cluster's time-limit warning, cluster.py). Entered once
    per process, around all its work: as it ends it also gives joblib back its own workers
    (stop_joblib_workers_too)."""
    global _stopping_since, _deferred, _loky
    _stopping_since, _deferred = None, None
    previous = {s: signal.signal(s, _on_signal) for s in (*SIGNALS, *extra)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _loky is not None:  # a notebook's own joblib work after ours gets joblib's workers
            from joblib import parallel

            parallel.register_parallel_backend("loky", _loky)
            _loky = None


def stop_joblib_workers_too(launcher: str) -> None:
    """In a launching process, before Hydra's launcher starts its workers (a sweep's callbacks),
    if it is joblib's (`launcher`: its `_target_`): each worker takes the stop handling as it starts (loky's initializer), not with its
    first job. A terminal's Ctrl-C reaches every process of its group: a worker with no handler
    yet would die of it, and joblib would then kill every worker, those ending their runs too.
    Until `stop_on_signals` ends, joblib's "loky" backend is this one (Hydra asks for it by name)."""
    global _loky
    if _loky is not None or not launcher.endswith("JoblibLauncher"):
        return
    from joblib import parallel

    _loky = parallel.BACKENDS["loky"]

    class StoppingLokyBackend(_loky):
        def configure(self, *args, **kwargs):
            kwargs.setdefault("initializer", _start_joblib_worker)
            return super().configure(*args, **kwargs)

    parallel.register_parallel_backend("loky", StoppingLokyBackend)


def _start_joblib_worker() -> None:
    global _worker
    _worker = True  # for the worker's whole life: a stop between jobs must not kill it (see above)
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    _name(BETWEEN_JOBS)


@contextmanager
def in_worker() -> Iterator[None]:
    """Around a job. In a joblib worker process (see stop_joblib_workers_too), a stop signal ends
    the job's run as `main()` does, and from then on the worker stays idle until its launcher kills
    it (a signal between jobs idles it at once). Elsewhere, nothing: `main()`, the Python API or a
    submitit job (cluster.requeue_when_stopped) already stop on signals."""
    global _in_job, _stopping_since
    if not _worker:
        yield
        return
    _stopping_since, _in_job = None, True
    _name(IN_JOB)
    try:
        yield
    except Stopped as stop:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal
        _idle_until_killed(stop.exit_code)
    finally:
        _in_job = False
        _name(BETWEEN_JOBS)


def _idle_until_killed(exit_code: int) -> None:
    """A stopped worker whose run has ended: it says so, then neither exits (joblib would kill the
    workers still ending theirs) nor takes another job. Its launcher kills it; if the launcher
    died first, or never does, it exits."""
    _name(ENDED)
    parent, deadline = os.getppid(), time.monotonic() + 2 * WORKERS_END_SECONDS
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(exit_code)


def _name(name: str) -> None:
    """This process's name, as its launching process reads it in /proc (see above)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except OSError:
        pass  # no /proc: no launching process reads it either
