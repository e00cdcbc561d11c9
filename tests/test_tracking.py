import subprocess
import sys
import time
from pathlib import Path

from filterviz.recording.tracking import flatten, resolve_store


def test_default_store_is_absolute_sqlite_under_mlruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = resolve_store(None)
    assert store.uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert store.artifact_location == (tmp_path.resolve() / "mlruns" / "artifacts").as_uri()
    assert store.ui_command() == f"mlflow ui --backend-store-uri {store.uri}"


def test_environment_then_override_choose_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team/runs.db")
    assert resolve_store(None).uri == f"sqlite:///{tmp_path.resolve()}/team/runs.db"
    assert Path(tmp_path / "team").is_dir()
    server = resolve_store("http://127.0.0.1:5000")
    assert (server.uri, server.artifact_location) == ("http://127.0.0.1:5000", None)
    assert server.ui_command() == "open http://127.0.0.1:5000"


def test_params_flatten_to_dotted_keys():
    assert flatten({"model": {"name": "vgg16", "weights": None}, "filters": [0, 5], "iters": 3}) == {
        "model.name": "vgg16", "model.weights": "None", "filters": "[0, 5]", "iters": "3"}


def test_the_reaper_ends_only_runs_whose_owner_is_gone(tmp_path):
    """Opening the store ends the runs left RUNNING by a dead process, and spares live ones: on this
    host by the process's pid and start time, on another by its heartbeat (10 minutes' silence)."""
    import os
    import socket
    import subprocess
    import time

    from filterviz.recording.owners import HEARTBEAT_TAG, HOST_TAG, PID_TAG, STARTED_TAG, owner_tags
    from filterviz.recording.tracking import Tracker

    store = resolve_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = Tracker(store, "filterviz")
    alive = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        # field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot
        started = Path(f"/proc/{alive.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        with_pid = {**owner_tags(), PID_TAG: str(alive.pid), STARTED_TAG: started}
        now = int(time.time())
        elsewhere = {HOST_TAG: "another-node", PID_TAG: "4242", STARTED_TAG: "1"}
        planted = {
            "live here": (with_pid, "RUNNING"),
            "pid reused here": ({**with_pid, STARTED_TAG: str(int(with_pid[STARTED_TAG]) - 1)}, "FAILED"),
            "process gone here": ({**owner_tags(), PID_TAG: str(gone.pid)}, "FAILED"),
            "fresh heartbeat elsewhere": ({**elsewhere, HEARTBEAT_TAG: str(now - 30)}, "RUNNING"),
            "quiet 9 min elsewhere": ({**elsewhere, HEARTBEAT_TAG: str(now - 540)}, "RUNNING"),
            "silent 11 min elsewhere": ({**elsewhere, HEARTBEAT_TAG: str(now - 660)}, "FAILED"),
        }
        ids = {name: tracker.client.create_run(tracker.experiment_id, run_name=name, tags=tags).info.run_id
               for name, (tags, _) in planted.items()}
        assert socket.gethostname() != "another-node" and os.getpid() != alive.pid

        Tracker(store, "filterviz")  # as the next command opens the store
        runs = {name: tracker.client.get_run(run_id) for name, run_id in ids.items()}
        assert {name: run.info.status for name, run in runs.items()} == {
            name: status for name, (_, status) in planted.items()}
        assert f"its process {alive.pid} on {socket.gethostname()} died" in runs["pid reused here"].data.tags["error"]
        assert "stopped its heartbeat 66" in runs["silent 11 min elsewhere"].data.tags["error"]
    finally:
        alive.kill()
        alive.wait()


def test_readers_opening_a_store_while_it_is_created_all_get_it(tmp_path):
    # MLflow creates a SQLite store's tables as a client is made; three processes doing so at one
    # instant (a watcher, `compare`, a run starting) each failed without the store's lock
    at = time.time() + 5  # after every interpreter has imported MLflow
    script = ("import sys, time; from filterviz.recording import tracking\n"
              "store = tracking.resolve_store(sys.argv[1]); at = float(sys.argv[2])\n"
              "time.sleep(max(0, at - time.time())); tracking.connect(store).search_experiments()")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", script, uri, str(at)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    failures = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120)]
    assert not failures, failures[0][-300:]
