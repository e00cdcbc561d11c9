"""Where a run cannot write, or a store is not a store: one line and exit 1, before anything is
computed, and nothing left RUNNING (issue: the last rough edges a newcomer hits)."""

import subprocess
import sys

import pytest

from conftest import run_cli

QUICK = ["iters=2", "input_size=32", "experiment=seed", "model.weights=null"]


@pytest.mark.parametrize("where, says", [
    ("afile", "{tmp}/afile is a file, where the output folder {folder} would go: move it, or choose another "
              "folder (hydra.run.dir=...)"),
    ("afile/run", "{tmp}/afile is a file, where the output folder {folder} would go"),
    ("/proc/filterviz-run", "cannot write the output folder {folder} ("),  # a place no one can write, even root
])
def test_an_output_folder_that_cannot_be_used_is_one_line(where, says, tmp_path):
    (tmp_path / "afile").write_text("in the way")
    folder = where if where.startswith("/") else str(tmp_path / where)
    proc = run_cli(*QUICK, f"hydra.run.dir={folder}", f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
                   cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and says.format(tmp=tmp_path, folder=folder) in proc.stderr
    assert (tmp_path / "afile").read_text() == "in the way"
    assert not (tmp_path / "mlruns").exists(), "nothing was started"


def test_a_file_where_the_results_folder_goes_stops_the_run_before_it_starts(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results").write_text("in the way")
    proc = run_cli(*QUICK, f"hydra.run.dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
                   cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{tmp_path / 'run' / 'results'} is a file, where the run's results folder" in proc.stderr
    assert (tmp_path / "run" / "results").read_text() == "in the way"
    assert not (tmp_path / "mlruns").exists(), "no run was opened, so none is left RUNNING"


@pytest.mark.parametrize("tool", ["compare", "reproduce"])
def test_compare_and_reproduce_pointed_at_a_file_that_is_not_a_store_say_so(tool, tmp_path):
    store = tmp_path / "notes.db"
    store.write_text("these are notes, not an MLflow store")
    proc = subprocess.run([sys.executable, "-m", f"filterviz.{tool}", "0123abcd", "--tracking-uri",
                           f"sqlite:///{store}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {store} is not an MLflow store (not an SQLite database): point at the store's mlflow.db "
        "(--tracking-uri or tracking.uri=sqlite:///path/mlflow.db)"]
    assert store.read_text() == "these are notes, not an MLflow store"
