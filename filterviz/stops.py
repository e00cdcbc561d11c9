"""Stop signals: SIGINT (Ctrl-C), SIGTERM (kill, a SLURM time limit or preemption) and SIGHUP
(a closed terminal) each become a `Stopped` exception in the main thread, so the job can end
its run KILLED with what it computed, and the process can exit with 128 + the signal.

The first signal stops cleanly; the same signal again within a few seconds is taken as the
same stop (a terminal and a parent process may both send it), and later as "stop at once".
Inside `deferred()` the first signal waits for the block's end, so bookkeeping that must happen
whole (a step's point in the file and in the stream) is never cut in half.
"""

import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

from filterviz.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAME_STOP_SECONDS = 3.0
_stopping_since: Optional[float] = None
_deferring = 0  # depth of deferred() blocks
_deferred: Optional[int] = None  # the first signal, arrived inside one, raised at its end


def _on_signal(signum: int, frame) -> None:
    global _stopping_since, _deferred
    now = time.monotonic()
    if _stopping_since is None:
        _stopping_since = now
        _forward(signum)
        if _deferring:
            _deferred = signum
            return
        raise Stopped(signum)
    if now - _stopping_since < SAME_STOP_SECONDS:
        return  # the same stop, sent twice (by the terminal and by a parent process, say)
    signal.signal(signum, signal.SIG_DFL)  # asked again: stop at once
    os.kill(os.getpid(), signum)


def _forward(signum: int) -> None:
    """Pass the signal on to our child processes (a joblib sweep's workers), so their runs end too."""
    me = str(os.getpid())
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid == me:
                os.kill(int(entry.name), signum)
        except (OSError, IndexError, ValueError):
            continue


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
