"""The quick-start notebook and Ctrl-C in a notebook, in a real Jupyter kernel (ipykernel)."""

import base64
import io
import os
import shutil
import time

import nbformat
import numpy as np
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from conftest import ROOT


def store(folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])


def test_the_quick_start_notebook_runs_in_a_kernel_and_shows_the_pictures(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # the notebook's own default store, ./mlruns
    shutil.copy(ROOT / "docs" / "quickstart.ipynb", tmp_path)
    notebook = nbformat.read(tmp_path / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    shown = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
             if o.output_type == "execute_result" and "text/html" in o.data]
    [html] = [o.data["text/html"] for o in shown]
    picture = base64.b64decode(html.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0])
    with Image.open(io.BytesIO(picture)) as grid:
        pixels = np.asarray(grid.convert("RGB"), dtype=float)
    assert pixels.std() > 20, "the grid shows pictures, not a blank figure"
    _, [run] = store(tmp_path)
    assert run.info.status == "FINISHED" and run.info.run_id in html
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    assert "(4, 48, 48, 3) [0, 1, 2, 3]" in printed and f"/runs/{run.info.run_id}/" in printed


def test_ctrl_c_in_a_notebook_ends_the_run_killed_with_its_pictures_and_the_kernel_lives_on(tmp_path):
    from jupyter_client.manager import start_new_kernel

    manager, kernel = start_new_kernel(kernel_name="python3", cwd=str(tmp_path),
                                       env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    try:
        kernel.execute_interactive("import keras, filterviz\nkeras.utils.set_random_seed(0)\n"
                                   "i = keras.Input((None, None, 3))\n"
                                   "model = keras.Model(i, keras.layers.Conv2D(4, 3, name='conv')(i))", timeout=120)
        said = []
        kernel.execute("result = filterviz.render(model, layer='conv', filters='0:2', iters=100000, input_size=32)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(" iteration " in text for text in said):
            message = kernel.get_iopub_msg(timeout=120)
            said.append(message["content"].get("text", ""))
        time.sleep(1)
        manager.interrupt_kernel()  # what Ctrl-C / the stop button does
        reply = kernel.get_shell_msg(timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        later = kernel.execute_interactive("print(result.complete, result.images.shape)", timeout=60,
                                           output_hook=lambda m: said.append(m["content"].get("text", "")))
        assert later["content"]["status"] == "ok" and "False (2, 32, 32, 3)" in "".join(said), "the kernel lives on"
    finally:
        manager.shutdown_kernel(now=True)
    client, [run] = store(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "stopped by SIGINT"
    assert run.data.tags["filterviz.partial"] == "true"
    assert len(client.get_metric_history(run.info.run_id, "activation/conv/f0000")) > 0
