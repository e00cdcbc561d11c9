"""A team's store: `tracking.uri=http://...` against a real `mlflow server` on PostgreSQL.

Needs a PostgreSQL database in FILTERVIZ_TEST_POSTGRES_URI; .ci/run installs PostgreSQL from
the system packages, starts it and sets that variable.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import WEIGHTS, needs_weights, run_cli

POSTGRES = os.environ.get("FILTERVIZ_TEST_POSTGRES_URI")
pytestmark = [
    needs_weights,
    pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: FILTERVIZ_TEST_POSTGRES_URI is unset "
                                            "(.ci/run starts one; see README, 'A team store')"),
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
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", POSTGRES,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
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
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


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
        history = api(server, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="loss/mean")
        assert [m["step"] for m in history["metrics"]] == [0, 1, 2]
        files = api(server, "artifacts/list", run_id=run["info"]["run_id"])["files"]
        assert {"grid.png", "images.npy", ".hydra"} <= {f["path"] for f in files}
