"""One invocation of the app, as named steps: check the settings, open the store, prepare
(model, layer, filters, recipe), ascend, revive dead filters, judge, write the files, record.

While it runs, activation points and pictures stream to the run (recording/live.py). A stop signal ends the run
KILLED with what was computed: the points so far, and the images as they were, written and
logged as partial results.

Glue between the config (OmegaConf), the ascent core and the recording layer. Hydra's app
stays in `__main__`, so this can be driven from a test or a notebook with a composed config.
"""

import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from filterviz import stops
from filterviz.console import Progress
from filterviz.core import hardware, models, quality
from filterviz.core.ascent import Ascent, AscentResult, ImageId, Recipe, StepCallback, retry_dead
from filterviz.core.filters import parse_filters
from filterviz.config import check_ranges
from filterviz.errors import ConfigError, Stopped, first_line
from filterviz.groups import GROUPS, build
from filterviz.recording import files, folders, images, provenance, settings, tracking
from filterviz.recording.live import LiveRun


@dataclass
class JobResult:
    results_dir: Path  # the files of this run, on local disk
    figures: Dict[str, float] = field(default_factory=dict)  # run-level quality figures, seconds
    run_id: Optional[str] = None
    artifact_uri: Optional[str] = None
    ui_command: Optional[str] = None
    run_url: Optional[str] = None  # the run's pictures in the MLflow UI


@dataclass
class Plan:
    """What a job computes before the ascent: the layer, the filters and the recipe."""

    cfg: DictConfig
    cut: models.LayerCut
    filters: List[int]
    recipe: Recipe
    overrides: List[str] = field(default_factory=list)  # the command line's settings
    fed: str = "none"  # what the model is fed: a preprocess mode (models.preprocess_mode), logged as model.preprocess
    fingerprint: str = ""  # the network's architecture and weights (models.fingerprint), a tag of the run
    model: Optional[keras.Model] = None  # the whole network (the dataset examples' pass reads it)

    def charted(self) -> Dict[ImageId, str]:
        """The images with their own metric series and picture slider in MLflow, by series name:
        the first `tracking.filter_series` (so a 512-filter run is one table, not 512 charts)."""
        copies = self.recipe.objective.copies
        ids = [ImageId(f, k) for f in self.filters for k in range(copies)][: self.cfg.tracking.filter_series]
        return {i: files.series_name(self.cut.layer, i, copies) for i in ids}

    @property
    def title(self) -> str:
        """What made the pictures: model, layer, filters, then the settings given (figures, run name)."""
        model = settings.model_label(self.cfg.model.name, self.cfg.model.path)
        return settings.describe(model, self.cut.layer, self.filters, self.overrides)

    def schedule(self) -> dict:
        cfg = self.cfg
        return dict(iters=cfg.iters, step_size=cfg.step_size, input_size=cfg.input_size,
                    batch_size=cfg.batch_size, seed=cfg.seed, layer=self.cut.layer, xla=cfg.xla)


@dataclass
class Outcome:
    result: AscentResult
    quality: quality.Quality
    seconds: float

    def figures(self) -> Dict[str, float]:
        """Every figure of the run, as logged: quality (run and per image) and speed."""
        result = self.result
        return {**self.quality.summary(), "seconds": self.seconds,
                "filter_iters_per_second": len(result.ids) / result.copies * result.losses.shape[1] / self.seconds}

    def per_image(self, layer: str) -> Dict[str, float]:
        """Each image's figures, e.g. `robustness/block3_conv1/f0012`."""
        names = [files.series_name(layer, i, self.result.copies) for i in self.result.ids]
        return {f"{figure}/{name}": float(value) for figure, values in self.quality.per_image().items()
                for name, value in zip(names, values)}

    def table(self, layer: str) -> Dict[str, list]:
        """Every image's figures as columns: one table, however many filters."""
        result = self.result
        return {"layer": [layer] * len(result.ids), "filter": [i.filter for i in result.ids],
                "copy": [i.copy for i in result.ids], "dead": [bool(d) for d in self.quality.dead],
                **{figure: [float(v) for v in values] for figure, values in self.quality.per_image().items()},
                "picture": [f"pictures/{files.png_name(i, result.copies)}" for i in result.ids]}


# Run-level figures an `optimized_metric` can name before the run exists (per-image ones too).
RUN_FIGURES = (*quality.Quality.SUMMARY, "seconds", "filter_iters_per_second")


def check_settings(cfg: DictConfig) -> None:
    """The range checks a type cannot express (config.check_ranges), and names only the core knows."""
    check_ranges(cfg)
    figure, _, image = cfg.optimized_metric.partition("/")
    per_image = figure in quality.Quality.PER_IMAGE and image.count("/") == 1
    if cfg.optimized_metric not in RUN_FIGURES and not per_image:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric}: not a figure of a run; use one of "
                          f"{', '.join(RUN_FIGURES)} (or one filter's, e.g. robustness/block3_conv1/f0000)")


def say_device() -> None:
    """The first console line: where the ascent computes; and why a GPU the driver reports is unused."""
    print(f"device: {hardware.describe_device()}")
    problem = hardware.gpu_problem()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)


def seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:  # process-wide and one-way in TensorFlow's public API
        tf.config.experimental.enable_op_determinism()


def open_store(cfg: DictConfig) -> Optional[tracking.Tracker]:
    """The run's store and experiment, opened before the slow model load so a bad URI fails fast."""
    if not cfg.tracking.enabled:
        return None
    return tracking.Tracker(tracking.resolve_store(cfg.tracking.uri), cfg.tracking.experiment)


def prepare(cfg: DictConfig) -> Plan:
    """Load the model, cut it at the layer, resolve the filters and build the recipe."""
    if cfg.precision.value == "bfloat16" and not hardware.bfloat16_units():
        print("warning: precision=bfloat16 on hardware without bfloat16 units (no GPU of compute capability 8+, no "
              "AVX512-BF16/AMX CPU): it is emulated, and several times slower than float32", file=sys.stderr)
    logged = str(cfg.model.path or "").startswith(models.MLFLOW_URIS)  # a models:/ or runs:/ model.path
    store = tracking.resolve_store(cfg.tracking.uri).uri if logged else None  # is in the run's store
    model = models.load_model(cfg.model.name, cfg.model.weights, cfg.model.path, cfg.precision.value,
                              cfg.model.get("include_top", False), store)
    cut = models.cut_at(model, cfg.layer)
    models.check_input_size(cut, cfg.input_size)
    filters = parse_filters(OmegaConf.to_object(cfg.filters) if OmegaConf.is_config(cfg.filters) else cfg.filters,
                            cut.n_filters, cfg.seed, cut.layer)
    param, transforms, objective, optimizer = (build(cfg, group) for group in GROUPS)
    if getattr(param, "decorrelate", False) and cut.channels != 3:
        print(f"note: colour decorrelation is for RGB and this model takes {cut.channels} channel(s): each channel's "
              "spectrum is optimised on its own", file=sys.stderr)
    batch = min(cfg.batch_size, len(filters) * objective.copies)
    models.check_memory(cut, cfg.input_size, batch, hardware.available_memory())
    map_side = min(models.activation_map(cut, cfg.input_size))
    fed = models.preprocess_mode(cfg.model.name, cfg.model.get("preprocess")) if cfg.preprocess else "none"
    if cfg.preprocess and cfg.model.name == "file" and cfg.model.get("preprocess") is None and not cfg.get("atlas"):
        print("note: model=file is fed the [0, 1] picture as it is: if it was trained on other inputs, set "
              "model.preprocess=caffe, tf, torch or an application's name", file=sys.stderr)
    recipe = Recipe(param=param, transforms=transforms, optimizer=optimizer,
                    objective=objective.for_layer(cut.layer, cut.n_filters, map_side, cfg.seed),
                    preprocess=models.preprocessor(fed, cut.channels))
    return Plan(cfg, cut, filters, recipe, fed=fed, fingerprint=models.fingerprint(model), model=model)


def revive_dead(plan: Plan, result: AscentResult, on_step: StepCallback) -> AscentResult:
    """Retry dead filters `retry_dead` times from new random starts, saying so."""
    dead = result.dead_filters()
    if not plan.cfg.retry_dead or not dead:
        return result
    print(f"filter(s) {', '.join(map(str, dead))} found nothing to climb: retrying from new random starts "
          f"(retry_dead={plan.cfg.retry_dead})")
    return retry_dead(plan.cut.extractor, result, plan.cfg.retry_dead, recipe=plan.recipe, on_step=on_step,
                      guard=stops.deferred, **plan.schedule())


def judge(plan: Plan, result: AscentResult) -> quality.Quality:
    atlas = plan.cfg.get("atlas")
    figures = quality.measure(plan.cut.extractor, result, plan.recipe, views=atlas.views if atlas else quality.VIEWS)
    dead = result.dead_filters()
    if dead:
        print(f"dead filter(s), nothing to climb: {', '.join(map(str, dead))}"
              + ("" if plan.cfg.retry_dead else " (retry_dead=2 tries new random starts)"))
    return figures


def execute(plan: Plan, results_dir: Path, live: Optional[LiveRun] = None) -> Outcome:
    """Ascend, revive dead filters, judge the pictures and write them with everything else. On a
    stop signal, write what the ascent had reached, marked partial, before passing the stop on."""
    cfg = plan.cfg
    progress = Progress(len(plan.filters), cfg.iters, lines=not cfg.get("atlas"))  # an atlas prints per job
    on_step = progress if live is None else _both(progress, live)
    gif_filter = (plan.filters[0] if cfg.gif_filter is None else cfg.gif_filter) if cfg.save_gif else None
    ascent = Ascent(plan.cut.extractor, plan.recipe, on_step=on_step, guard=stops.deferred, gif_filter=gif_filter,
                    on_snapshot=None if live is None or not live.charted else live.snapshot, **plan.schedule())
    start, result = time.perf_counter(), None
    try:
        result = ascent.run(plan.filters)
        result = revive_dead(plan, result, on_step)
        progress.close()
        outcome = Outcome(result, judge(plan, result), time.perf_counter() - start)
        if cfg.exemplars.data is not None and not cfg.get("atlas"):  # an atlas finds its examples once, for all
            outcome.quality.vs_examples = examples_beside(plan, result, outcome.quality, results_dir)
        files.write_results(result, outcome.quality, plan.title, results_dir, _resolved(cfg))
    except Stopped as stop:
        # a finished ascent stopped while judged or written keeps its images (written again, whole)
        reached = result or ascent.partial()
        if reached is not None:
            title = plan.title if reached.complete else f"{plan.title} ({stop}: partial)"
            files.write_results(reached, None, title, results_dir, _resolved(cfg))
        raise
    finally:
        progress.close()
    return outcome


def examples_beside(plan: Plan, result: AscentResult, figures: quality.Quality, results_dir: Path):
    """The dataset examples of the run's filters beside its pictures (results/examples/), from the
    pass over `exemplars.data` for its layer (a finished pass's checkpoint is read, not redone), and
    each picture's peak activation over its filter's best example's."""
    from filterviz.exemplars import job as exemplars_job

    request = exemplars_job.request_for(plan.cfg, plan.model, [plan.cut.layer], plan.cfg.exemplars)
    exemplars_job.find(request, plan.model, plan.cfg.exemplars.data, results_dir, None,
                       label=settings.model_label(plan.cfg.model.name, plan.cfg.model.path),
                       channels={plan.cut.layer: sorted(set(plan.filters))})
    with np.load(results_dir / "examples" / "arrays" / f"{plan.cut.layer}.npz") as saved:
        best = saved["values"][:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([p / best[f] if best[f] > 0 else np.nan for p, f in zip(figures.peak_activation, result.filters)])


def _both(first: StepCallback, second: StepCallback) -> StepCallback:
    def both(chunk, step, objective, activation):
        first(chunk, step, objective, activation)
        second(chunk, step, objective, activation)
    return both


def _resolved(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def record(tracker: tracking.Tracker, run_id: str, plan: Plan, outcome: Optional[Outcome], output_dir: Path) -> None:
    """Log the run's figures, mean curves, filters table and files to its MLflow run (only the files
    of a stopped one). Per-image figures as metrics for the images that have their own series."""
    if outcome is not None:
        charted = set(plan.charted().values())
        per_image = {n: v for n, v in outcome.per_image(plan.cut.layer).items() if n.split("/", 1)[1] in charted}
        tracker.log_values(run_id, **outcome.figures(), **per_image)
        tracker.log_curves(run_id, objective=outcome.result.losses, activation=outcome.result.activations)
        tracker.client.log_table(run_id, outcome.table(plan.cut.layer), FILTERS_TABLE)
        _log_attributions(tracker, run_id, plan, outcome.result)
    if (output_dir / "results").is_dir():
        tracker.log_artifacts(run_id, output_dir / "results")
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        tracker.log_artifacts(run_id, hydra_dir, ".hydra")


def _log_attributions(tracker: tracking.Tracker, run_id: str, plan: Plan, result: AscentResult) -> None:
    """The charted images' attribution pictures (maco) as MLflow images, `attribution/<layer>/f<i:04d>`
    at the last step, so the UI's image views show them beside the pictures (files alone they do not)."""
    if result.attributions is None:
        return
    charted = plan.charted()
    for image_id, image, attribution in zip(result.ids, result.images, result.attributions):
        if image_id in charted:
            tracker.client.log_image(run_id, images.with_attribution(image, attribution),
                                     key=f"attribution/{charted[image_id]}", step=plan.cfg.iters)


_jobs_run = 0  # in this process
FILTERS_TABLE = "filters.json"  # every image's figures, one row each (MLflow's log_table)


def run(cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = (), command: str = "",
        parent_run_id: Optional[str] = None, run_name: Optional[str] = None) -> JobResult:
    """One run. `overrides`: the settings given on the command line (they name the run);
    `run_name`: a sweep job's name instead (the values it sweeps)."""
    check_settings(cfg)
    folders.usable_folder(output_dir / "results", "the run's results folder")  # before anything is computed
    if not cfg.get("atlas"):  # an atlas says it once, for all its jobs
        say_device()
    global _jobs_run
    if _jobs_run:  # an atlas runs many jobs in one process: drop the last job's Keras state (0.3 s of gc)
        keras.backend.clear_session()
    _jobs_run += 1
    seed_everything(cfg.seed, cfg.deterministic)
    tracker = open_store(cfg)
    plan = prepare(cfg)
    plan.overrides = list(overrides)
    if not cfg.get("atlas"):
        print(f"{plan.title}: {len(plan.filters)} filter(s), {cfg.iters} iterations, step {cfg.step_size}, "
              f"{cfg.input_size}x{cfg.input_size}")
    results_dir = output_dir / "results"
    if tracker is None:
        outcome = execute(plan, results_dir)
        return JobResult(results_dir, {**outcome.figures(), **outcome.per_image(plan.cut.layer)})

    params = settings.picture_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))
    params["model.preprocess"] = plan.fed  # what the model was really fed, not the switch alone
    tags = {**provenance.provenance_tags(command), "filterviz.filters": ",".join(map(str, plan.filters)),
            "filterviz.layer": plan.cut.layer, "filterviz.model_fingerprint": plan.fingerprint, **cfg.tracking.tags}
    finished: Optional[JobResult] = None  # once the run is FINISHED in the store
    try:
        with ExitStack() as finishing:  # left after the run has ended (see below)
            with tracker.run(run_name or plan.title, params, tags, parent_run_id) as run_id:
                live = LiveRun(tracker, run_id, plan.charted(), cfg.iters, plan.recipe.objective.copies)
                try:
                    outcome = execute(plan, results_dir, live)
                except Stopped as stop:
                    _keep(tracker, run_id, plan, live, None, output_dir)
                    if (results_dir / files.PARTIAL).is_file():
                        tracker.client.set_tag(run_id, "filterviz.partial", "true")
                    print(f"{stop}: run {run_id} ends KILLED with every activation point so far; the images it "
                          f"had reached are in {results_dir} (partial)", file=sys.stderr)
                    raise
                except Exception:
                    try:
                        live.close()  # the points computed before the error
                    except Exception:
                        pass  # the error that ended the run is the one to report
                    raise
                # the results are whole on disk: a stop now waits until the run is in the store, FINISHED
                # (cut here, the run ended KILLED with its artifacts half logged, and said nothing)
                finishing.enter_context(stops.deferred(
                    "the run is complete: it goes into the store before the stop"))
                _keep(tracker, run_id, plan, live, outcome, output_dir)
                result = _result(tracker, run_id, plan, outcome, results_dir)
            finished = result
    except Stopped as stop:
        if finished is not None:
            print(f"{stop} as run {run_id} ended: it is complete, FINISHED in the store; every result is in "
                  f"{results_dir}", file=sys.stderr)
            stop.finished = finished
        elif isinstance(stop.__context__, ConfigError):  # the store was lost as the whole run went in
            print(f"error: {stop.__context__}", file=sys.stderr)
        raise
    return finished


def _result(tracker: tracking.Tracker, run_id: str, plan: Plan, outcome: Outcome, results_dir: Path) -> JobResult:
    figures = {**outcome.figures(), **outcome.per_image(plan.cut.layer)}
    return JobResult(results_dir, figures, run_id, tracker.artifact_uri(run_id), tracker.store.ui_command(),
                     tracker.run_url(run_id))


def _keep(tracker: tracking.Tracker, run_id: str, plan: Plan, live: LiveRun, outcome: Optional[Outcome],
          output_dir: Path) -> None:
    """Everything into the store; if the store is gone, say where the results are instead."""
    try:
        live.close()
        record(tracker, run_id, plan, outcome, output_dir)
    except Exception as e:
        raise ConfigError(f"lost the MLflow store {tracker.store.uri} during the run ({first_line(e)}): "
                          f"every result is in {output_dir / 'results'}") from None
