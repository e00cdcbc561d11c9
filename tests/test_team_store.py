"""A team's store: `tracking.uri=http://...` against a real `mlflow server` on PostgreSQL.

Needs a PostgreSQL database in FILTERVIZ_TEST_POSTGRES_URI; .ci/run installs PostgreSQL from
the system packages, starts it and sets that variable.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pytest

from conftest import WEIGHTS, needs_weights, run_cli

POSTGRES = os.environ.get("FILTERVIZ_TEST_POSTGRES_URI")
pytestmark = [
    needs_weights,
    pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: FILTERVIZ_TEST_POSTGRES_URI is unset "
                                            "(.ci/run starts one; see docs/clusters.md, 'A team store')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body=None, **query):
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def server_process(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", POSTGRES,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # no job-execution workers (MLflow's huey consumer): filterviz runs none, and they slow the start
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited:\n" + (tmp_path / "server.log").read_text()[-2000:])
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 60 s")
        yield base, proc
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """The server and its workers: stopping only the parent leaves a worker serving."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def server(server_process):
    return server_process[0]


def test_a_parallel_sweep_against_a_tracking_server_is_readable_through_rest(server, tmp_path):
    experiment = f"team-{uuid.uuid4().hex[:8]}"
    proc = run_cli("-m", "hydra/launcher=joblib", "step_size=1,10", "layer=block1_conv1", "iters=3", "input_size=16",
                   f"model.weights={WEIGHTS}", f"tracking.uri={server}", f"tracking.experiment={experiment}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    experiment_id = api(server, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    runs = api(server, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    [parent] = [r for r, t in zip(runs, tags) if t.get("filterviz.sweep") == "parent"]
    children = [(r, t) for r, t in zip(runs, tags) if t.get("filterviz.sweep") != "parent"]
    assert parent["info"]["status"] == "FINISHED"
    assert sorted(r["info"]["run_name"] for r, _ in children) == ["step_size=1", "step_size=10"]
    for run, tag in children:
        assert run["info"]["status"] == "FINISHED"
        assert tag["mlflow.parentRunId"] == parent["info"]["run_id"]
        history = api(server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="activation/mean")
        assert [m["step"] for m in history["metrics"]] == [0, 1, 2]
        files = api(server, "artifacts/list", run_id=run["info"]["run_id"])["files"]
        assert {"grid.png", "images.npy", ".hydra"} <= {f["path"] for f in files}


def test_jobs_that_start_at_once_on_a_new_experiment_all_record_into_it(server):
    """Runs started together (two terminals, a job array) each find no experiment and create it:
    every one must end up in the one experiment, none stopped by the other's creation."""
    from filterviz.recording.tracking import Store, Tracker

    experiment, starting = f"race-{uuid.uuid4().hex[:8]}", threading.Barrier(6)
    Tracker(Store(server, None), f"{experiment}-first")  # a process's first client imports for long: not in the race

    def tracker_id() -> str:
        starting.wait()
        return Tracker(Store(server, None), experiment).experiment_id

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(lambda _: tracker_id(), range(6)))
    assert set(ids) == {api(server, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]}


LONG = ["layer=block1_conv1", "filters=0:2", "iters=3000", "input_size=32", f"model.weights={WEIGHTS}",
        "hydra.run.dir=out"]


def start(base: str, experiment: str, cwd, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "filterviz", *LONG, *extra, f"tracking.uri={base}",
                             f"tracking.experiment={experiment}"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def running_run_with_points(base: str, experiment: str, proc, at_least: int = 20) -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            experiment_id = api(base, "experiments/get-by-name", experiment_name=experiment)["experiment"][
                "experiment_id"]
            for run in api(base, "runs/search", {"experiment_ids": [experiment_id]}).get("runs", []):
                history = api(base, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="activation/block1_conv1/f0000")
                if run["info"]["status"] == "RUNNING" and len(history.get("metrics", [])) >= at_least:
                    return run["info"]["run_id"]
        except urllib.error.HTTPError:
            pass  # the experiment is not there yet
        time.sleep(0.5)
    pytest.fail("no activation points reached the server while the run ran")


def test_a_run_stopped_against_the_team_server_ends_killed_with_every_point(server, tmp_path):
    experiment = f"stop-{uuid.uuid4().hex[:8]}"
    proc = start(server, experiment, tmp_path)
    run_id = running_run_with_points(server, experiment, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    run = api(server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "KILLED"
    computed = int(np.isfinite(np.load(tmp_path / "out" / "results" / "activations.npy")[0]).sum())
    history = api(server, "metrics/get-history", run_id=run_id, metric_key="activation/block1_conv1/f0000")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(computed))


def test_a_server_that_goes_away_mid_run_loses_nothing_computed(server_process, tmp_path):
    """Two runs lose their server: one the user then stops, one that goes on to its end. Each
    ends with one line naming the folder that holds every result."""
    base, server_proc = server_process
    experiment = f"gone-{uuid.uuid4().hex[:8]}"
    stopped = start(base, experiment, tmp_path, "iters=100000")  # still ascending when stopped, however slow the machine
    own_end = subprocess.Popen(
        [sys.executable, "-m", "filterviz", *LONG, "iters=1500", "hydra.run.dir=own_end", f"tracking.uri={base}",
         f"tracking.experiment={experiment}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    running_run_with_points(base, experiment, stopped, at_least=5)
    running_run_with_points(base, experiment, own_end, at_least=1)  # a tenth of the way (points come per tenth)
    stop_group(server_proc, signal.SIGKILL)
    time.sleep(1)
    stopped.send_signal(signal.SIGTERM)  # the user stops it: the results must still be on disk
    for proc, folder, partial in ((stopped, "out", True), (own_end, "own_end", False)):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 if partial else proc.returncode == 1, err
        assert "Traceback" not in err
        results = tmp_path / folder / "results"
        assert f"every result is in {results}" in err.strip().splitlines()[-1]
        assert (results / "images.npy").is_file() and (results / "PARTIAL").is_file() == partial
        computed = np.isfinite(np.load(results / "losses.npy")[0]).sum()
        assert computed == 1500 if not partial else computed > 5
