"""`filterviz.render` from Python, on a model that only lives in memory: the command's job, into
a real store, reproducible from its record."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from filterviz.errors import ConfigError

SETTINGS = dict(layer="dw", filters="0:2", iters=6, input_size=24)


def in_memory_model():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, keras.layers.DepthwiseConv2D(3, name="dw")(x), name="notebook_net")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    import filterviz

    folder = tmp_path_factory.mktemp("api")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    model = in_memory_model()
    here = os.getcwd()
    os.chdir(folder)  # as a notebook in its own folder: a reproduction runs where the run ran
    try:
        return folder, uri, model, filterviz.render(model, tracking=uri, output_dir=folder / "out", **SETTINGS)
    finally:
        os.chdir(here)


def test_render_returns_the_pictures_and_records_the_run_with_its_network(rendered):
    from filterviz.core.models import fingerprint

    folder, uri, model, result = rendered
    assert result.images.shape == (2, 24, 24, 3) and result.filters == [0, 1] and result.complete
    assert not np.allclose(result.images, result.images[0, 0, 0]), "pictures, not a flat start"
    assert 0 <= result.figures["quality/specificity"] <= 1
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["layer"] == "dw"
    assert run.data.tags["filterviz.model_fingerprint"] == fingerprint(model)
    assert result.run_url.endswith(f"/runs/{result.run_id}/model-metrics?workflowType=machine_learning")
    assert "model.keras" in {a.path for a in client.list_artifacts(run.info.run_id)}, "the network is in the run"
    html = result._repr_html_()
    assert html.count('<img src="data:image/png;base64,') == 1 and result.run_id in html
    assert len(result.grid().axes) == 2


def test_ctrl_c_as_the_run_is_being_logged_waits_and_the_run_is_finished_and_whole(tmp_path, monkeypatch, capsys):
    """The results are whole once written: a stop then must not leave the run KILLED in the store
    with half its files (and no word of where the rest is)."""
    import filterviz
    from filterviz.recording import tracking

    log_artifacts, pressed = tracking.Tracker.log_artifacts, []

    def stopped_while_logging(self, *args, **kwargs):
        if not pressed:
            pressed.append(os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C as the run's files go into the store
        return log_artifacts(self, *args, **kwargs)

    monkeypatch.setattr(tracking.Tracker, "log_artifacts", stopped_while_logging)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = filterviz.render(in_memory_model(), tracking=uri, output_dir=tmp_path / "out", **SETTINGS)
    assert result.complete and result.figures
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert {"images.npy", "grid.png", "model.keras"} <= {a.path for a in client.list_artifacts(result.run_id)}
    said = capsys.readouterr().err
    assert "stopped by SIGINT: the run is complete: it goes into the store before the stop" in said
    assert f"stopped by SIGINT as run {result.run_id} ended: it is complete" in said


def test_the_command_on_the_same_network_and_settings_makes_the_same_pictures(rendered, tmp_path):
    folder, _, _, result = rendered
    proc = run_cli("model=file", f"model.path={folder / 'out' / 'results' / 'model.keras'}", "model.weights=null",
                   *[f"{k}={v}" for k, v in SETTINGS.items()], "tracking=off", "hydra.run.dir=cli", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "cli" / "results" / "images.npy"), result.images)


def test_a_run_of_an_in_memory_model_reproduces_bit_for_bit_after_its_file_is_gone(rendered):
    folder, uri, _, result = rendered
    (folder / "out" / "results" / "model.keras").unlink()  # the notebook's kernel and its files are gone
    proc = subprocess.run([sys.executable, "-m", "filterviz.reproduce", result.run_id, "--tracking-uri", uri],
                          cwd=folder, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    assert f"reproduces {result.run_id} bit for bit" in proc.stdout


@pytest.mark.parametrize("settings, says", [
    (dict(iters="abc"), "Value 'abc' of type 'str' could not be converted to Integer"),
    (dict(nonsense=3), "Could not override 'nonsense'"),
    (dict(experiment="nope"), "unknown experiment 'nope': use one of best,"),
    (dict(layer="nope"), "unknown layer 'nope' in notebook_net: conv layers are conv, dw"),
    (dict(overrides=["model.preprocess=bgr"]), "model.preprocess=bgr: use none, caffe, tf, torch"),
])
def test_a_wrong_setting_is_the_commands_one_line_error_as_an_exception(settings, says, tmp_path):
    import filterviz

    with pytest.raises(ConfigError) as error:
        filterviz.render(in_memory_model(), **{**SETTINGS, "tracking": "off", "output_dir": tmp_path, **settings})
    assert says in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="model=int: pass a keras.Model, an application's name"):
        filterviz.render(42)


def test_a_model_logged_with_mlflow_is_rendered_by_its_models_uri(tmp_path):
    import mlflow
    import mlflow.keras

    import filterviz

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("training", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)  # as a training script logs its model
    try:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.keras.log_model(in_memory_model(), name="model", registered_model_name="notebook_net")
    finally:
        mlflow.set_tracking_uri(None)
    result = filterviz.render("models:/notebook_net/1", tracking=uri, output_dir=tmp_path / "out", **SETTINGS)
    assert result.images.shape == (2, 24, 24, 3)
    run = client.get_run(result.run_id)
    assert run.data.params["model.path"] == "models:/notebook_net/1" and run.info.status == "FINISHED"
    from filterviz.core.models import fingerprint
    assert run.data.tags["filterviz.model_fingerprint"] == fingerprint(in_memory_model()), "the very network"
    with pytest.raises(ConfigError, match=r"could not fetch the MLflow model models:/notebook_net/9 from sqlite"):
        filterviz.render("models:/notebook_net/9", tracking=uri, output_dir=tmp_path / "bad", **SETTINGS)


def test_the_atlas_of_an_in_memory_model_covers_every_kind_resumes_and_each_picture_reproduces(tmp_path,
                                                                                              monkeypatch):
    import filterviz.atlas.build  # noqa: F401 (the package imported: filterviz.atlas is still the call)
    import filterviz
    from filterviz.core.models import fingerprint
    from test_models import CONVOLUTIONS, mixed_model

    monkeypatch.chdir(tmp_path)  # a notebook's folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = mixed_model()
    kinds = [*CONVOLUTIONS, "add", "relu"]  # every convolution kind, a residual sum, an activation
    settings = dict(layers=kinds, per_layer=2, experiment="seed", iters=4, input_size=24, tracking=uri)
    made = filterviz.atlas(model, **settings)
    assert [(layer["name"], [f["filter"] for f in layer["filters"]]) for layer in made.layers] == [
        (name, [0, 1]) for name in kinds] and not made.failed
    assert made.page.is_file() and made.pictures("separable").shape[:3] == (2, 24, 24)
    html = made._repr_html_()
    assert html.count("<img src=\"data:image/png;base64,") == 2 * len(kinds) and made.run_id in html
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(made.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["atlas.layers"] == ",".join(kinds)
    # the network was saved once, by its fingerprint, and its atlas keeps a copy
    [saved] = (tmp_path / "multirun" / "atlas" / "models").iterdir()
    assert saved.name == f"{fingerprint(model)}.keras"
    assert saved.name in {a.path for a in client.list_artifacts(made.run_id)}

    assert filterviz.atlas(model, **settings).run_id == made.run_id, "the same call resumes the same atlas"
    with pytest.raises(ConfigError, match="atlas.layers: 'nope' matches no convolution of this model; its "
                                          "convolutions are conv, depthwise"):
        filterviz.atlas(model, **{**settings, "layers": "nope"})

    saved.unlink()  # the kernel and the file are gone: a picture reproduces from the atlas's copy
    picture = made.layers[kinds.index("add")]["filters"][1]
    proc = subprocess.run([sys.executable, "-m", "filterviz.reproduce", picture["run_id"], "--tracking-uri", uri],
                          cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    assert f"reproduces {picture['run_id']} bit for bit" in proc.stdout
