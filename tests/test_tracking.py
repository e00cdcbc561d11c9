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
