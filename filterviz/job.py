"""One invocation of the app: check the settings, run the ascent, write and record the results.

Glue between the config (OmegaConf), the ascent core and the tracking layer. Hydra itself
stays in `__main__`, so this can be driven from a test or a notebook with a composed config.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from filterviz import images, models, tracking
from filterviz.ascent import AscentResult, visualize_filters
from filterviz.console import Progress
from filterviz.errors import ConfigError
from filterviz.filters import parse_filters


@dataclass
class JobResult:
    results_dir: Path  # the files of this run, on local disk
    final_activation: float  # mean over filters: what a sweeper maximises
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
    title = f"{cfg.model.name} {cut.layer}"
    print(f"{title}: {len(filters)} filter(s), {cfg.iters} iterations, step {cfg.step_size}, "
          f"{cfg.input_size}x{cfg.input_size}")

    results_dir = output_dir / "results"
    if tracker is None:
        ascent, _ = _ascend_and_write(cfg, cut, filters, title, results_dir)
        return JobResult(results_dir, float(ascent.final_activations.mean()))

    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    tags = {**tracking.provenance_tags(command), "filterviz.filters": ",".join(map(str, filters)),
            **cfg.tracking.tags}
    with tracker.run(run_name or f"{cfg.model.name}-{cut.layer}", params, tags, parent_run_id) as run_id:
        ascent, seconds = _ascend_and_write(cfg, cut, filters, title, results_dir)
        tracker.log_losses(run_id, filters, ascent.losses)
        tracker.log_values(run_id, seconds=seconds, filter_iters_per_second=len(filters) * cfg.iters / seconds,
                           **{"activation/mean": ascent.final_activations.mean()},
                           **{f"activation/filter_{f}": a for f, a in zip(filters, ascent.final_activations)})
        tracker.log_artifacts(run_id, results_dir)
        hydra_dir = output_dir / ".hydra"
        if hydra_dir.is_dir():
            tracker.log_artifacts(run_id, hydra_dir, ".hydra")
    return JobResult(results_dir, float(ascent.final_activations.mean()), run_id, tracker.artifact_uri(run_id),
                     tracker.store.ui_command())


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:  # process-wide and one-way in TensorFlow's public API
        tf.config.experimental.enable_op_determinism()


def _ascend_and_write(cfg: DictConfig, cut: models.LayerCut, filters: List[int], title: str, results_dir: Path):
    progress = Progress(len(filters), cfg.iters)
    start = time.perf_counter()
    try:
        ascent = visualize_filters(cut.extractor, filters, iters=cfg.iters, step_size=cfg.step_size,
                                   input_size=cfg.input_size, batch_size=cfg.batch_size, on_step=progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    write_results(ascent, title, results_dir, OmegaConf.to_yaml(cfg, resolve=True))
    return ascent, seconds


def write_results(ascent: AscentResult, title: str, out: Path, resolved_config: str) -> None:
    """Everything a run produces, as files: per-filter PNGs, grid, loss curves, raw arrays, config."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    for f, image in zip(ascent.filters, ascent.images):
        images.save_png(image, out / "images" / f"filter_{f:04d}.png")
    images.save_grid(ascent.images, ascent.filters, title, out / "grid.png")
    images.save_loss_curves(ascent.losses, ascent.filters, title, out / "loss_curve.png")
    np.save(out / "images.npy", ascent.images)
    np.save(out / "filters.npy", np.asarray(ascent.filters))
    np.save(out / "losses.npy", ascent.losses)
    np.save(out / "final_activations.npy", ascent.final_activations)
    (out / "config_resolved.yaml").write_text(resolved_config)
