"""Who owns a run: the host, process id and start time of the process that records it, and its
heartbeat. A run left RUNNING by an owner that is gone (SIGKILL, the OOM killer, a reboot)
is recognised by the next command that opens the store (`Tracker.reap`)."""

import os
import socket
import time
from typing import Dict, Mapping, Optional

HOST_TAG, PID_TAG, STARTED_TAG = "filterviz.host", "filterviz.pid", "filterviz.process_started"
HEARTBEAT_TAG, HEARTBEAT_SECONDS = "filterviz.heartbeat", 30
STALE_SECONDS = 600  # a run on another host whose heartbeat is older than this has died


def owner_tags() -> Dict[str, str]:
    """Which process owns a run, so that a later command can tell when it is gone."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STARTED_TAG: _process_started(os.getpid()),
            HEARTBEAT_TAG: str(int(time.time()))}


def _process_started(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_gone(tags: Mapping[str, str]) -> Optional[str]:
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if not host or not pid:
        return None  # not ours to judge
    if host == socket.gethostname():
        started = _process_started(int(pid))
        if not started or (tags.get(STARTED_TAG) and started != tags[STARTED_TAG]):
            return f"its process {pid} on {host} died without ending the run (killed, or out of memory)"
        return None
    beat = int(tags.get(HEARTBEAT_TAG, "0") or 0)
    if time.time() - beat > STALE_SECONDS:
        return f"its process {pid} on {host} stopped its heartbeat {int(time.time() - beat)} s ago"
    return None
