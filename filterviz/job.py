"""One invocation of the app: check the settings, run the ascent, write and record the results.

Glue between the config (OmegaConf), the ascent core and the tracking layer. Hydra itself
stays in `__main__`, so this can be driven from a test or a notebook with a composed config.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from filterviz.core import models, objectives, quality
from filterviz.recording import images, tracking
from filterviz.core.ascent import AscentResult, Recipe, dead_filters, dead_images, retry_dead, visualize_filters
from filterviz.core.optimizers import make_optimizer
from filterviz.core.params import make_param
from filterviz.core.transforms import Transforms
from filterviz.console import Progress
from filterviz.errors import ConfigError
from filterviz.core.filters import parse_filters


@dataclass
class JobResult:
    results_dir: Path  # the files of this run, on local disk
    quality: Dict[str, float] = field(default_factory=dict)  # run-level quality figures, seconds
    run_id: Optional[str] = None
    artifact_uri: Optional[str] = None
    ui_command: Optional[str] = None


def check_settings(cfg: DictConfig) -> None:
    """The range checks a type cannot express; each error says what would be right."""
    if cfg.iters < 1:
        raise ConfigError(f"iters={cfg.iters}: the number of iterations must be at least 1")
    if not cfg.step_size > 0:
        raise ConfigError(f"step_size={cfg.step_size}: the step size must be greater than 0, e.g. step_size=10")
    if cfg.input_size < 1:
        raise ConfigError(f"input_size={cfg.input_size}: the image side must be a positive number of pixels")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}: at least 1 filter per batch")


def run(cfg: DictConfig, output_dir: Path, run_name: Optional[str] = None, command: str = "",
        parent_run_id: Optional[str] = None) -> JobResult:
    check_settings(cfg)
    _seed_everything(cfg.seed, cfg.deterministic)
    # Open the store before the slow model load, so a bad URI fails fast; no run exists yet.
    tracker = tracking.Tracker(tracking.resolve_store(cfg.tracking.uri), cfg.tracking.experiment) \
        if cfg.tracking.enabled else None

    model = models.load_model(cfg.model.name, cfg.model.weights, cfg.model.path, cfg.precision.value)
    cut = models.cut_at(model, cfg.layer)
    models.check_input_size(cut, cfg.input_size)
    filters = parse_filters(OmegaConf.to_object(cfg.filters) if OmegaConf.is_config(cfg.filters) else cfg.filters,
                            cut.n_filters, cfg.seed, cut.layer)
    recipe = make_recipe(cfg, cut)
    title = f"{cfg.model.name} {cut.layer}"
    print(f"{title}: {len(filters)} filter(s), {cfg.iters} iterations, step {cfg.step_size}, "
          f"{cfg.input_size}x{cfg.input_size}")

    results_dir = output_dir / "results"
    if tracker is None:
        outcome = _ascend_and_write(cfg, cut, recipe, filters, title, results_dir)
        return JobResult(results_dir, outcome.figures())

    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    tags = {**tracking.provenance_tags(command), "filterviz.core.filters": ",".join(map(str, filters)),
            **cfg.tracking.tags}
    with tracker.run(run_name or f"{cfg.model.name}-{cut.layer}", params, tags, parent_run_id) as run_id:
        outcome = _ascend_and_write(cfg, cut, recipe, filters, title, results_dir)
        ascent = outcome.ascent
        tracker.log_losses(run_id, _labels(ascent), ascent.losses)
        per_filter = {f"{name}/filter_{label}": value for name, values in outcome.quality.per_image().items()
                      for label, value in zip(_labels(ascent), values)}
        tracker.log_values(run_id, seconds=outcome.seconds,
                           filter_iters_per_second=len(ascent.filters) * cfg.iters / outcome.seconds,
                           **outcome.quality.summary(), **per_filter)
        tracker.log_artifacts(run_id, results_dir)
        hydra_dir = output_dir / ".hydra"
        if hydra_dir.is_dir():
            tracker.log_artifacts(run_id, hydra_dir, ".hydra")
    return JobResult(results_dir, outcome.figures(), run_id, tracker.artifact_uri(run_id), tracker.store.ui_command())


def make_recipe(cfg: DictConfig, cut: models.LayerCut) -> Recipe:
    """The config's technique groups as the core's objects; bad combinations fail in one line."""
    objective = cfg.objective
    terms = objectives.build(objective.expr, OmegaConf.to_container(cfg.regularizers))
    if objective.copies < 1:
        raise ConfigError(f"objective.copies={objective.copies}: at least 1 image per filter")
    if any(name == "diversity" for _, name in terms) and objective.copies < 2:
        raise ConfigError("the diversity term needs several images per filter: set objective.copies=4, say")
    direction = None
    if any(name == "direction" for _, name in terms):
        direction = np.asarray(objective.direction if objective.direction is not None
                               else objectives.random_direction(cut.n_filters, cfg.seed), np.float32)
        if direction.shape != (cut.n_filters,):
            raise ConfigError(f"objective.direction has {direction.size} values; {cut.layer} has {cut.n_filters} "
                              "channels")
    return Recipe(
        param=make_param(cfg.param.name, **_options(cfg.param)),
        transforms=Transforms(**OmegaConf.to_container(cfg.transforms)),
        objective=terms,
        optimizer=make_optimizer(cfg.optimizer.name, **_options(cfg.optimizer)),
        preprocess=models.preprocessor(cfg.model.name) if cfg.preprocess else None,
        copies=objective.copies,
        border=objective.border,
        direction=direction,
    )


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:  # process-wide and one-way in TensorFlow's public API
        tf.config.experimental.enable_op_determinism()


def _options(node: DictConfig) -> Dict:
    """A group's settings as keyword arguments, without the `name` that chose the class."""
    return {k: v for k, v in OmegaConf.to_container(node, enum_to_str=True).items() if k != "name"}


@dataclass
class Outcome:
    ascent: AscentResult
    quality: quality.Quality
    seconds: float

    def figures(self) -> Dict[str, float]:
        return {**self.quality.summary(), "seconds": self.seconds}


def _ascend_and_write(cfg: DictConfig, cut: models.LayerCut, recipe: Recipe, filters: List[int], title: str,
                      results_dir: Path) -> Outcome:
    progress = Progress(len(filters), cfg.iters)
    schedule = dict(iters=cfg.iters, step_size=cfg.step_size, input_size=cfg.input_size, batch_size=cfg.batch_size,
                    layer=cut.layer)
    start = time.perf_counter()
    try:
        ascent = visualize_filters(cut.extractor, filters, recipe=recipe, seed=cfg.seed, on_step=progress,
                                   gif_filter=(filters[0] if cfg.gif_filter is None else cfg.gif_filter)
                                   if cfg.save_gif else None, **schedule)
        dead = dead_filters(ascent.filters, dead_images(ascent))
        if cfg.retry_dead and dead:
            print(f"filter(s) {', '.join(map(str, dead))} never fired: retrying from a livelier random start "
                  f"(retry_dead={cfg.retry_dead})")
            ascent = retry_dead(cut.extractor, ascent, cfg.retry_dead, recipe=recipe, seed=cfg.seed,
                                on_step=progress, **schedule)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    figures = quality.measure(cut.extractor, ascent.images, ascent.filters, ascent.losses, recipe.preprocess)
    if figures.dead.any():
        dead = dead_filters(ascent.filters, figures.dead)
        print(f"dead filter(s), never fired: {', '.join(map(str, dead))}"
              + ("" if cfg.retry_dead else " (retry_dead=2 tries new random starts)"))
    write_results(ascent, figures, title, results_dir, OmegaConf.to_yaml(cfg, resolve=True))
    return Outcome(ascent, figures, seconds)


def _labels(ascent: AscentResult) -> List[str]:
    """`12` per filter, or `12.0`, `12.1`, ... when a filter has several images."""
    if ascent.copies == 1:
        return [str(f) for f in ascent.filters]
    return [f"{f}.{i % ascent.copies}" for i, f in enumerate(ascent.filters)]


def write_results(ascent: AscentResult, figures: quality.Quality, title: str, out: Path,
                  resolved_config: str) -> None:
    """Everything a run produces, as files: per-filter PNGs, grid, loss curves, raw arrays, config."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = _labels(ascent)
    for label, image in zip(labels, ascent.images):
        number, _, copy = label.partition(".")
        images.save_png(image, out / "images" / (f"filter_{int(number):04d}" + (f"_{copy}" if copy else "") + ".png"))
    images.save_grid(ascent.images, labels, title, out / "grid.png")
    images.save_loss_curves(ascent.losses, labels, title, out / "loss_curve.png")
    if ascent.frames:
        images.save_gif(ascent.frames, out / "ascent.gif")
    np.save(out / "images.npy", ascent.images)
    np.save(out / "filters.npy", np.asarray(ascent.filters))
    np.save(out / "losses.npy", ascent.losses)
    np.save(out / "final_activations.npy", figures.final_activation)
    (out / "config_resolved.yaml").write_text(resolved_config)
