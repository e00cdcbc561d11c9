"""`filterviz.render(model, layer=..., filters=..., **settings)`: the command's job, from Python.

The settings are the command line's keys, presets and groups (`experiment="maco"`, `iters=128`,
`param={"decay": 1.5}`), composed by Hydra's compose API onto the same config and schema, so the
defaults, presets and checks are the command's, and a wrong one raises the same one-line
`ConfigError`. The run is `job.run`, as `python -m filterviz` runs it, into the same store.

`model` is an application's name (`"vgg16"`), a `.keras` file, an MLflow model URI
(`models:/name/3`, `runs:/<id>/model`, in the run's store), or a `keras.Model` in memory,
which is saved beside the run's results (`model.keras`, logged with them) and run as
`model=file`: so the record names a file that holds the very network, and `reproduce` can rerun it.
"""

import base64
import io
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from filterviz.errors import ConfigError, Stopped

MODEL_FILE = "model.keras"  # an in-memory model, saved beside the run's results


@dataclass
class Render:
    """What `render` made: the pictures as arrays, their filters and figures, and where the run is."""

    images: np.ndarray  # (n, size, size, channels) in [0, 1] for display (raw pixels for `pixel`)
    filters: List[int]
    figures: Dict[str, float]
    results_dir: Path
    run_id: Optional[str] = None
    run_url: Optional[str] = None
    complete: bool = True  # False: stopped (Ctrl-C), and these are the pictures it had reached
    title: str = ""
    losses: np.ndarray = field(default=None, repr=False)

    def grid(self, columns: int = 8):
        """The pictures as one matplotlib figure, each titled with its filter."""
        import matplotlib.pyplot as plt

        from filterviz.recording.images import to_display

        n = len(self.images)
        cols = min(columns, n)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, image, f in zip(axes.flat, self.images, self.filters):
            shown = to_display(image)
            ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"f{f}", fontsize=8)
        fig.suptitle(self.title + ("" if self.complete else " (stopped: partial)"), fontsize=9)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        """Jupyter's view: the grid, the run's figures and a link to it in the MLflow UI."""
        import matplotlib.pyplot as plt

        fig = self.grid()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        picture = base64.b64encode(buffer.getvalue()).decode()
        quality = ", ".join(f"{k.split('/', 1)[1]} {v:.3g}" for k, v in self.figures.items()
                            if k.startswith("quality/"))
        run = (f'<a href="{self.run_url}">MLflow run {self.run_id}</a>' if self.run_id else "not recorded")
        return (f'<div class="filterviz"><img src="data:image/png;base64,{picture}"/>'
                f"<p>{quality}<br>{run} · files in <code>{self.results_dir}</code></p></div>")


def overrides_for(settings: Dict[str, Any], prefix: str = "") -> List[str]:
    """Keyword settings as the command line's `key=value` overrides (a dict is a group's keys)."""
    overrides = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            overrides += overrides_for(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            overrides.append(f"{name}=[{','.join(map(str, value))}]")
        elif value is None:
            overrides.append(f"{name}=null")
        elif isinstance(value, bool):
            overrides.append(f"{name}={str(value).lower()}")
        else:
            overrides.append(f"{name}={value}")
    return overrides


def compose(overrides: List[str]):
    """The config `python -m filterviz <overrides>` runs with; a wrong override is one ConfigError."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from filterviz.__main__ import unknown_group_choice
    from filterviz.config import register_configs

    problem = unknown_group_choice(overrides)
    if problem:
        raise ConfigError(problem)
    register_configs()
    GlobalHydra.instance().clear()  # a notebook calls again and again
    try:
        with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
            cfg = hydra_compose("config", overrides=overrides)
        from omegaconf import OmegaConf

        OmegaConf.resolve(cfg)  # a wrong value fails here, as the command fails before it runs
    except (HydraException, OmegaConfBaseException) as e:
        said = " ".join(str(e).split())
        cause = e.__cause__ and " ".join(str(e.__cause__).split("\n")[0].split())
        raise ConfigError(f"{said}: {cause}" if cause and cause not in said else said) from None
    return cfg


def render(model: Any = "vgg16", *, layer: Optional[str] = None, filters: Any = 0,
           tracking: Optional[str] = None, output_dir: Optional[os.PathLike] = None,
           overrides: Sequence[str] = (), **settings) -> Render:
    """Render `filters` of `layer` of `model` as `python -m filterviz` would; see the module's doc.
    `tracking`: "off" records nothing, else a store URI (default: the command's store);
    `output_dir` defaults to outputs/<date>/<time>; `overrides`: more of the command line's
    `key=value` as they are written there (e.g. "model.preprocess=tf")."""
    import keras

    from filterviz import job
    from filterviz.console import import_tensorflow_quietly
    from filterviz.stops import stop_on_signals

    import_tensorflow_quietly()
    from filterviz.core.models import MLFLOW_URIS

    out = Path(output_dir or Path("outputs", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))).resolve()
    given = overrides_for({"layer": layer, "filters": filters} if layer else {"filters": filters})
    if isinstance(model, keras.Model):
        (out / "results").mkdir(parents=True, exist_ok=True)
        path = out / "results" / MODEL_FILE
        model.save(path)
        model_overrides = ["model=file", f"model.path={path}", "model.weights=null"]
    elif isinstance(model, str) and model.startswith(MLFLOW_URIS):  # a model logged with MLflow
        model_overrides = ["model=file", f"model.path={model}", "model.weights=null"]
    elif isinstance(model, (str, os.PathLike)) and str(model).endswith(".keras"):
        model_overrides = ["model=file", f"model.path={Path(model).resolve()}", "model.weights=null"]
    elif isinstance(model, str):
        model_overrides = [f"model={model}"]
    else:
        raise ConfigError(f"model={type(model).__name__}: pass a keras.Model, an application's name (vgg16) or "
                          "a .keras file")
    overrides = [*model_overrides, *given, *overrides_for(settings), *overrides,
                 *(["tracking=off"] if tracking == "off" else [f"tracking.uri={tracking}"] if tracking else [])]
    cfg = compose(overrides)
    command = shlex.join(["python", "-m", "filterviz", *overrides])
    try:
        with stop_on_signals():  # Ctrl-C in a notebook: the run ends KILLED with its partial results
            result = job.run(cfg, out, overrides, command)
    except Stopped as stop:
        if not (out / "results" / "images.npy").is_file():  # stopped before the ascent began
            raise KeyboardInterrupt(str(stop)) from None
        print(f"{stop}: the run ends KILLED; the partial pictures are in {out / 'results'}")
        return _read(out / "results", {}, None, None, " ".join(given), complete=False)
    return _read(result.results_dir, result.figures, result.run_id, result.run_url, " ".join(given))


def _read(results: Path, figures: Dict[str, float], run_id, run_url, title: str, complete: bool = True) -> Render:
    """A run's results, from the files it wrote (the same whether it finished or was stopped)."""
    images = np.load(results / "images.npy")
    filters = [int(f) for f in np.load(results / "filters.npy")]
    losses = np.load(results / "losses.npy")
    return Render(images, filters, figures, results, run_id, run_url, complete, title, losses)
