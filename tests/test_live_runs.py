"""Runs watched while they run and stopped as users stop them: real processes, a real store."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import WEIGHTS, needs_weights, run_cli
from filterviz import stops
from filterviz.errors import Stopped
from filterviz.recording import tracking

pytestmark = needs_weights
LONG = ["layer=block1_conv1", "filters=0:2", "iters=3000", "input_size=32", f"model.weights={WEIGHTS}"]


def start(*overrides: str, cwd: Path, own_group: bool = False) -> subprocess.Popen:
    """`own_group`: the command leads its process group, as in a terminal, whose Ctrl-C reaches all of it."""
    return subprocess.Popen([sys.executable, "-m", "filterviz", *overrides], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=own_group,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0", "MLFLOW_TRACKING_URI": ""})


def store(cwd: Path) -> MlflowClient:
    """The store as a watcher opens it while the run may be creating it (filterviz's own way)."""
    return tracking.connect(tracking.resolve_store(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"))


def runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("filterviz")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def wait_for_points(client: MlflowClient, proc: subprocess.Popen, key: str = "activation/block1_conv1/f0000", at_least: int = 20):
    """Poll the store until a RUNNING run of the live process has `at_least` points of `key`."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for run in runs(client) if (Path(client.tracking_uri[len("sqlite:///"):]).exists()) else []:
            if run.info.status == "RUNNING" and len(client.get_metric_history(run.info.run_id, key)) >= at_least:
                return run
        time.sleep(0.5)
    pytest.fail("no activation points reached the store while the run ran")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_the_run_killed_keeping_every_point_and_the_images_so_far(tmp_path, signum):
    proc = start(*LONG, "hydra.run.dir=out", cwd=tmp_path)
    client = store(tmp_path)
    live = wait_for_points(client, proc)
    streamed = client.get_metric_history(live.info.run_id, "activation/block1_conv1/f0000")
    assert len({m.timestamp for m in streamed}) > 1, "each point carries the time of its step"

    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)  # it stops within seconds; a hang fails here, not a stopwatch
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and f"stopped by {signum.name}" in err

    run = client.get_run(live.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == f"stopped by {signum.name}"
    assert run.data.tags["filterviz.partial"] == "true"
    activations = np.load(tmp_path / "out" / "results" / "activations.npy")
    computed = int(np.isfinite(activations[0]).sum())
    assert 0 < computed < 3000
    kept = client.get_metric_history(run.info.run_id, "activation/block1_conv1/f0000")
    assert sorted(m.step for m in kept) == list(range(computed)), "every point computed, none twice"
    np.testing.assert_allclose(sorted(kept, key=lambda m: m.step)[-1].value, activations[0, computed - 1],
                               rtol=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"PARTIAL", "images.npy", "grid.png", "pictures"} <= artifacts
    assert not np.allclose(np.load(tmp_path / "out" / "results" / "images.npy"), 0.5)


def test_a_sweep_stopped_ends_the_running_job_and_its_parent_killed(tmp_path):
    proc = start("-m", "layer=block1_conv1", "filters=0,1", "iters=3000", "input_size=32", f"model.weights={WEIGHTS}",
                 cwd=tmp_path)
    client = store(tmp_path)
    wait_for_points(client, proc, at_least=5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    every = runs(client)
    parents = [r for r in every if r.data.tags.get("filterviz.sweep") == "parent"]
    children = [r for r in every if r.data.tags.get("filterviz.sweep") != "parent"]
    assert [p.info.status for p in parents] == ["KILLED"]
    assert [c.info.status for c in children] == ["KILLED"], "the second job never started"


@pytest.mark.parametrize("launcher,ctrl_c", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], False),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], True),  # a worker never given a job gets it too
    (["hydra/launcher=submitit_local"], False)], ids=["joblib", "joblib_ctrl_c", "submitit_local"])
def test_a_parallel_sweep_stopped_ends_its_running_job_killed_with_its_images_and_keeps_the_finished_one(
        tmp_path, launcher, ctrl_c):
    """The workers run jobs outside main(): the stop, sent to the launching process or by a
    terminal to every process, must still reach the running job, which keeps its partial images,
    and no worker may take the others down (joblib kills every worker when one dies)."""
    proc = start("-m", "layer=block1_conv1", "filters=0", "iters=20,100000", "input_size=32",
                 f"model.weights={WEIGHTS}", *launcher, cwd=tmp_path, own_group=ctrl_c)
    client = store(tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the short job finished, the long one streaming
        assert proc.poll() is None, proc.communicate()
        status = {r.info.run_name: r for r in runs(client)} if (tmp_path / "mlruns" / "mlflow.db").exists() else {}
        if status.get("iters=20") and status["iters=20"].info.status == "FINISHED" and status.get("iters=100000") \
                and len(client.get_metric_history(status["iters=100000"].info.run_id,
                                                  "activation/block1_conv1/f0000")) >= 5:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the short job did not finish, or the long one stream, within 240 s")
    workers = [p for p in _descendants(proc.pid)
               if b"loky.backend.popen_loky_posix" in _read(p / "cmdline") or b"submitit" in _read(p / "cmdline")]
    assert workers

    if ctrl_c:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == (130 if ctrl_c else 143) and "Traceback" not in err, err
    every = {r.info.run_name: r for r in runs(client)}
    assert every["iters=20"].info.status == "FINISHED"
    long = every["iters=100000"]
    assert long.info.status == "KILLED" and long.data.tags["filterviz.partial"] == "true", err
    assert np.isfinite(np.load(tmp_path / "multirun" / _only(tmp_path) / "1" / "results" / "activations.npy")).any()
    [parent] = [r for name, r in every.items() if r.data.tags.get("filterviz.sweep") == "parent"]
    assert parent.info.status == "KILLED"
    time.sleep(2)
    assert not [w for w in workers if _read(w / "stat").rsplit(b")", 1)[-1].split()[:1] not in ([], [b"Z"])], \
        "no worker left behind"


def test_a_stop_leaves_alone_the_children_that_are_not_its_job_workers():
    """Ctrl-C on a run in a notebook must not stop what else the kernel started (a server, a browser)."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with stops.stop_on_signals(), pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the stop is raised here
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(timeout=1)
    finally:
        bystander.kill()
        bystander.wait()


def _descendants(pid: int) -> list:
    """The /proc folders of a process's descendants (a submitit-local job is the child of its controller)."""
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            children.setdefault(_parent(p), []).append(p)
    found, todo = [], [pid]
    while todo:
        for p in children.get(todo.pop(), []):
            found.append(p)
            todo.append(int(p.name))
    return found


def _parent(proc_dir: Path) -> int:
    try:
        return int(_read(proc_dir / "stat").rsplit(b")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return -1


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _only(tmp_path: Path) -> str:
    [day] = (tmp_path / "multirun").iterdir()
    [time_] = day.iterdir()
    return f"{day.name}/{time_.name}"


def test_a_run_killed_outright_is_ended_failed_by_the_next_command(tmp_path):
    proc = start(*LONG, cwd=tmp_path)
    # while it starts, a run that finishes (the two load at once: one wait, not two)
    finished = run_cli(*LONG[:3], "iters=1", "input_size=16", LONG[-1], "hydra.run.dir=finished", cwd=tmp_path,
                       env={"MLFLOW_TRACKING_URI": ""})
    assert finished.returncode == 0, finished.stderr
    client = store(tmp_path)
    victim = wait_for_points(client, proc, at_least=1)
    proc.kill()
    proc.wait()
    assert client.get_run(victim.info.run_id).info.status == "RUNNING", "nothing could end it"

    again = run_cli(*LONG[:3], "iters=1", "input_size=16", LONG[-1], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert again.returncode == 0, again.stderr
    statuses = {r.info.run_id: r.info.status for r in runs(client)}
    assert statuses[victim.info.run_id] == "FAILED"
    assert f"its process {proc.pid}" in client.get_run(victim.info.run_id).data.tags["error"]
    assert sorted(statuses.values()) == ["FAILED", "FINISHED", "FINISHED"], "nothing else changes"


def test_runs_started_together_on_a_fresh_store_all_finish(tmp_path):
    procs = [start("layer=block1_conv1", f"filters={f}", "iters=2", "input_size=16", f"model.weights={WEIGHTS}",
                   f"hydra.run.dir=out{f}", cwd=tmp_path) for f in range(3)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert sorted(r.info.status for r in runs(store(tmp_path))) == ["FINISHED"] * 3


def test_an_unreachable_tracking_server_is_one_line_naming_it_before_the_model_loads(tmp_path):
    # MLflow's own retries would take minutes (7 with backoff); filterviz bounds them to seconds, so
    # a run that is not over well within 2 minutes fails here
    proc = run_cli("tracking.uri=http://127.0.0.1:9", "iters=1", f"model.weights={WEIGHTS}", cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the MLflow server http://127.0.0.1:9 does not answer")
    assert "vgg16" not in proc.stdout, "the model never loads"


def test_a_diverging_ascent_fails_and_says_why(tmp_path):
    proc = run_cli("experiment=seed", "step_size=1e38", "layer=block1_conv1", "iters=5", "input_size=16",
                   f"model.weights={WEIGHTS}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: the ascent diverged: filter 0's objective or image became NaN")
    [run] = runs(store(tmp_path))
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]


def test_the_same_signal_again_stops_at_once_while_the_first_stop_waits_on_the_store(tmp_path):
    """A stop that cannot finish (here the store is locked by another writer, as a busy team
    database or a slow disk would hold it) gives way to the same signal sent again: the process
    dies of it at once, and the next command ends its run FAILED."""
    import sqlite3

    proc = start(*LONG, "hydra.run.dir=out", cwd=tmp_path)
    client = store(tmp_path)
    live = wait_for_points(client, proc, at_least=5)
    writer = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db", timeout=30, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # every write of the run now waits on this lock
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(4)  # past the few seconds in which a second signal is taken as the same stop
        assert proc.poll() is None, "the first stop is still waiting on the store"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM, "killed by the signal itself, not a clean exit (143)"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        if proc.poll() is None:
            proc.kill()
    again = run_cli(*LONG[:3], "iters=1", "input_size=16", LONG[-1], "hydra.run.dir=again", cwd=tmp_path,
                    env={"MLFLOW_TRACKING_URI": ""})
    assert again.returncode == 0, again.stderr
    assert client.get_run(live.info.run_id).info.status == "FAILED"
