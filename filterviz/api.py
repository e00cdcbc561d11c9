"""`filterviz.render(model, layer=..., filters=..., **settings)`, `filterviz.atlas(model, ...)` and
`filterviz.exemplars(model, data=..., ...)`: the commands' jobs, from Python.

The settings are the command line's keys, presets and groups (`experiment="maco"`, `iters=128`,
`param={"decay": 1.5}`), composed by Hydra's compose API onto the same config and schema, so the
defaults, presets and checks are the command's, and a wrong one raises the same one-line
`ConfigError`. A render is `job.run`, as `python -m filterviz` runs it, into the same store; an
atlas is the atlas command's Hydra multirun (its sweeper, launcher and jobs), run in this process.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from filterviz.errors import ConfigError, Stopped

MODEL_FILE = "model.keras"  # an in-memory model, saved beside the run's results
MEMORY_MODELS = "multirun/atlas/models"  # an in-memory atlas's network, by fingerprint: the same one resumes


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


@contextmanager
def hydra_app(overrides: List[str]) -> Iterator[Any]:
    """Hydra initialised on the command's config (its `Hydra`, to compose or run a multirun
    with), for `overrides`; a wrong override is the command's one line, as a ConfigError."""
    from hydra import initialize_config_module
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
            yield GlobalHydra.instance().hydra
    except (HydraException, OmegaConfBaseException) as e:
        said = " ".join(str(e).split())
        cause = e.__cause__ and " ".join(str(e.__cause__).split("\n")[0].split())
        raise ConfigError(f"{said}: {cause}" if cause and cause not in said else said) from None


def compose(overrides: List[str], config: str = "config"):
    """The config `python -m filterviz <overrides>` runs with (`config="exemplars"`: the dataset
    examples' command's); a wrong override is one ConfigError."""
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    with hydra_app(overrides):
        cfg = hydra_compose(config, overrides=overrides)
        OmegaConf.resolve(cfg)  # a wrong value fails here, as the command fails before it runs
    return cfg


def model_overrides(model: Any, save_as: Callable[[Any], Path]) -> List[str]:
    """The command line's model keys for `model`; a keras.Model is saved first, where `save_as` says."""
    import keras

    from filterviz.core.models import MLFLOW_URIS

    if isinstance(model, keras.Model):
        path = save_as(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        return ["model=file", f"model.path={path}", "model.weights=null"]
    if isinstance(model, str) and model.startswith(MLFLOW_URIS):  # a model logged with MLflow
        return ["model=file", f"model.path={model}", "model.weights=null"]
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".keras"):
        return ["model=file", f"model.path={Path(model).resolve()}", "model.weights=null"]
    if isinstance(model, str):
        return [f"model={model}"]
    raise ConfigError(f"model={type(model).__name__}: pass a keras.Model, an application's name (vgg16), "
                      "a .keras file or an MLflow model URI")


def tracking_overrides(tracking: Optional[str]) -> List[str]:
    return ["tracking=off"] if tracking == "off" else [f"tracking.uri={tracking}"] if tracking else []


def render(model: Any = "vgg16", *, layer: Optional[str] = None, filters: Any = 0,
           tracking: Optional[str] = None, output_dir: Optional[os.PathLike] = None,
           overrides: Sequence[str] = (), **settings) -> Render:
    """Render `filters` of `layer` of `model` as `python -m filterviz` would; see the module's doc.
    `tracking`: "off" records nothing, else a store URI (default: the command's store);
    `output_dir` defaults to outputs/<date>/<time>; `overrides`: more of the command line's
    `key=value` as they are written there (e.g. "model.preprocess=tf")."""
    from filterviz import job
    from filterviz.core.hardware import import_tensorflow_quietly
    from filterviz.stops import stop_on_signals

    import_tensorflow_quietly()
    out = Path(output_dir or Path("outputs", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))).resolve()
    given = overrides_for({"layer": layer, "filters": filters} if layer else {"filters": filters})
    overrides = [*model_overrides(model, lambda _: out / "results" / MODEL_FILE), *given,
                 *overrides_for(settings), *overrides, *tracking_overrides(tracking)]
    cfg = compose(overrides)
    command = shlex.join(["python", "-m", "filterviz", *overrides])
    try:
        with stop_on_signals():  # Ctrl-C in a notebook: the run ends KILLED with its partial results
            result = job.run(cfg, out, overrides, command)
    except Stopped as stop:
        if stop.finished is not None:  # the run had just ended, complete (job.run said so)
            result = stop.finished
            return _read(result.results_dir, result.figures, result.run_id, result.run_url, " ".join(given))
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


@dataclass
class Atlas:
    """What an atlas (`atlas`, or the command) made: its page, its parent run, and per layer the filters as the page shows
    them (picture file, figures, run, the command that redoes it); `failed`: jobs to run again."""

    page: Path
    run_id: str
    run_url: Optional[str]
    layers: List[dict]
    failed: List[str]

    def pictures(self, layer: str) -> np.ndarray:
        """A layer's pictures, in filter order, as the page shows them (n, size, size, 3|4) in [0, 1]."""
        import matplotlib.image

        [found] = [entry for entry in self.layers if entry["name"] == layer] or [None]
        if found is None:
            raise ConfigError(f"the atlas has no layer {layer!r}: it has {', '.join(l['name'] for l in self.layers)}")
        return np.stack([matplotlib.image.imread(self.page.parent / f["picture"]) for f in found["filters"]])

    def grid(self, per_layer: int = 8):
        """The first `per_layer` pictures of every layer, a row each, titled with the filter."""
        import matplotlib.pyplot as plt

        rows = [layer for layer in self.layers if layer["filters"]]
        cols = max([min(per_layer, len(layer["filters"])) for layer in rows] or [1])
        fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.4 * cols, 1.6 * max(1, len(rows))), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for row, layer in zip(axes, rows):
            for ax, image, f in zip(row, self.pictures(layer["name"])[:per_layer], layer["filters"]):
                ax.imshow(image)
                ax.set_title(f"{layer['name']} f{f['filter']}" if ax is row[0] else f"f{f['filter']}", fontsize=7)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        """Jupyter's view: a line per layer (filters done, a strip of pictures) and the links."""
        rows = []
        for layer in self.layers:
            strip = "".join(f'<img src="data:image/png;base64,{_base64(self.page.parent / f["picture"])}" '
                            f'title="f{f["filter"]}" style="width:40px;image-rendering:pixelated"/>'
                            for f in layer["filters"][:12])
            rows.append(f"<tr><td><code>{layer['name']}</code></td><td>{layer['done']}/{layer['n_filters']}</td>"
                        f"<td>{strip}</td></tr>")
        failed = f"<p>{len(self.failed)} job(s) failed: the same call again redoes them</p>" if self.failed else ""
        return (f'<div class="filterviz"><table>{"".join(rows)}</table>{failed}'
                f'<p><a href="{self.page.as_uri()}">the atlas page</a> · '
                f'<a href="{self.run_url}">MLflow run {self.run_id}</a></p></div>')


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def atlas(model: Any = "vgg16", *, layers: Any = None, per_layer: Optional[int] = None,
          tracking: Optional[str] = None, overrides: Sequence[str] = (), **settings) -> Atlas:
    """Every filter of `model` (or of `layers`: names, patterns), as `python -m filterviz.atlas`
    makes it: the same sweeper, launcher, jobs and store, so the same call again resumes it and the
    command resumes what the call began. `per_layer`: the first N filters of each layer; the other
    settings are the command's (`iters=64`, `atlas={"chunk": 8}`, `hydra={"launcher": ...}` is
    `overrides=["hydra/launcher=joblib"]`). A keras.Model is saved once per network, by its
    fingerprint, under multirun/atlas/models/, and its atlas keeps a copy (reproducible by run id)."""
    from hydra.core.plugins import Plugins

    from filterviz.__main__ import task
    from filterviz.atlas.__main__ import atlas_argv
    from filterviz.core.hardware import import_tensorflow_quietly
    from filterviz.recording import sweep
    from filterviz.stops import stop_on_signals
    from hydra_plugins.filterviz_atlas.atlas_sweeper import AtlasSweeper

    import_tensorflow_quietly()
    from filterviz.core.models import fingerprint

    atlas_keys = {k: v for k, v in {"layers": layers, "per_layer": per_layer}.items() if v is not None}
    given = [*model_overrides(model, lambda m: Path(MEMORY_MODELS, f"{fingerprint(m)}.keras").resolve()),
             *overrides_for(settings), *overrides_for(atlas_keys, "atlas."), *overrides,
             *tracking_overrides(tracking)]
    Plugins.instance().register(AtlasSweeper)
    AtlasSweeper.raise_errors = True
    try:
        with stop_on_signals(), hydra_app(given) as hydra:
            # what `--multirun` on the command line becomes (hydra/_internal/utils.py)
            argv = [a for a in atlas_argv(given) if a != "--multirun"] + ["hydra.mode=MULTIRUN"]
            return hydra.multirun("config", task, argv)  # filterviz/atlas/build.py makes the Atlas
    except Stopped as stop:
        sweep.end_stopped_sweep(stop)  # the atlas's parent run ends KILLED; its finished jobs stay done
        raise KeyboardInterrupt(f"{stop}: the atlas ends KILLED; the same call again resumes it") from None
    finally:
        AtlasSweeper.raise_errors = False


@dataclass
class Examples:
    """What a dataset-examples pass (`exemplars`, or the command) recorded: per layer and filter a
    strip of its top images and quantile images, and the table of where each comes from."""

    results_dir: Path
    layers: List[str]
    table: Dict[str, list]  # a row per example: layer, filter, kind (top, q0.9), rank, file, image, y, x, activation, field
    read: int
    skipped: List[str]
    run_id: Optional[str] = None
    run_url: Optional[str] = None

    def top(self, layer: str) -> Dict[str, np.ndarray]:
        """A layer's arrays: per filter (rows) the top k's values, image numbers, ys and xs, then each quantile's."""
        from filterviz.exemplars.examples import FOLDER

        self._check(layer)
        with np.load(self.results_dir / FOLDER / "arrays" / f"{layer}.npz") as saved:
            return {name: saved[name] for name in saved.files}

    def strip(self, layer: str, filter: int) -> np.ndarray:
        """One filter's strip (top images, then the quantile images) as an RGB array."""
        import matplotlib.image

        from filterviz.exemplars.examples import strip_name

        self._check(layer)
        return matplotlib.image.imread(self.results_dir / strip_name(layer, filter))

    def rows(self, layer: str, filter: int) -> List[dict]:
        """The table's rows of one filter: where each of its examples comes from."""
        keep = [i for i, (l, f) in enumerate(zip(self.table["layer"], self.table["filter"])) if l == layer and f == filter]
        return [{name: column[i] for name, column in self.table.items()} for i in keep]

    def _check(self, layer: str) -> None:
        if layer not in self.layers:
            raise ConfigError(f"no examples of layer {layer!r}: there are {', '.join(self.layers)}")

    def _repr_html_(self) -> str:
        """Jupyter's view: the first filters' strips of each layer, and the run."""
        from filterviz.exemplars.examples import strip_name

        rows = []
        for layer in self.layers:
            filters = sorted({f for l, f in zip(self.table["layer"], self.table["filter"]) if l == layer})[:4]
            strips = "".join(f'<div>f{f} <img src="data:image/png;base64,{_base64(self.results_dir / strip_name(layer, f))}"'
                             f' style="height:40px"/></div>' for f in filters)
            rows.append(f"<tr><td><code>{layer}</code></td><td>{strips}</td></tr>")
        run = f'<a href="{self.run_url}">MLflow run {self.run_id}</a>' if self.run_id else "not recorded"
        return (f'<div class="filterviz"><table>{"".join(rows)}</table><p>{self.read} images read, '
                f"{len(self.skipped)} skipped · {run} · files in <code>{self.results_dir}</code></p></div>")


def exemplars(model: Any = "vgg16", *, data: os.PathLike, layers: Any = None, k: Optional[int] = None,
              tracking: Optional[str] = None, output_dir: Optional[os.PathLike] = None,
              overrides: Sequence[str] = (), **settings) -> Examples:
    """Each filter's top natural images in the folder `data`, as `python -m filterviz.exemplars` finds
    them (the same pass, checkpoints and store: the same call again resumes a stopped pass, and a
    finished one is read back, not redone). `layers`: names or patterns (default: every convolution);
    the other settings are the command's (`input_size=96`, `quantiles=[0.9]`). Sharding is the
    command's (`shards=N` over Hydra's launchers); here the pass runs in this process."""
    import json

    from filterviz.core.hardware import import_tensorflow_quietly
    from filterviz.exemplars import job
    from filterviz.exemplars.examples import TABLE
    from filterviz.stops import stop_on_signals

    if settings.get("shards", 1) != 1:
        raise ConfigError("shards: a sharded pass is the command's (python -m filterviz.exemplars shards=N "
                          "hydra/launcher=joblib); in Python the pass runs in this process")
    import_tensorflow_quietly()
    from filterviz.core.models import fingerprint

    out = Path(output_dir or Path("outputs", "exemplars", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))).resolve()
    keys = {k_: v for k_, v in {"data": str(Path(data).resolve()), "layers": layers, "k": k}.items() if v is not None}
    given = [*model_overrides(model, lambda m: Path(MEMORY_MODELS, f"{fingerprint(m)}.keras").resolve()),
             *overrides_for(keys), *overrides_for(settings), *overrides, *tracking_overrides(tracking)]
    cfg = compose(given, "exemplars")
    command = shlex.join(["python", "-m", "filterviz.exemplars", *given])
    try:
        with stop_on_signals():  # Ctrl-C: a checkpoint, and the run ends KILLED; the same call resumes
            outcome = job.run(cfg, out, command)
    except Stopped as stop:
        raise KeyboardInterrupt(f"{stop}: the pass keeps a checkpoint; the same call again resumes it") from None
    table = json.loads((outcome.results_dir / TABLE).read_text())
    return Examples(outcome.results_dir, outcome.request.layers, table, outcome.read, outcome.skipped,
                    outcome.run_id, outcome.run_url)
