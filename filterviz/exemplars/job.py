"""One invocation of the dataset-examples pass: check, load, find the pass's checkpoints, read the
images (a shard of them, or all), and record the examples in one MLflow run.

Unsharded, the job is the whole pass and its run holds the examples. Sharded (`shards=N`, a
Hydra multirun), each job reads its shard into a child run, and the launching process merges the
shards into the parent run (filterviz/exemplars/shards.py). Both end in `record`.
"""

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from filterviz.atlas.plan import select_layers
from filterviz.config import check_examples
from filterviz.core import models
from filterviz.core.exemplars import image_files
from filterviz.errors import ConfigError, first_line
from filterviz.exemplars import examples
from filterviz.exemplars.passes import Request, ShardState, merged, run_shard
from filterviz.recording import folders, provenance, settings, tracking
from filterviz.recording.owners import HEARTBEAT_TAG

KEY_TAG = "filterviz.exemplars"  # the pass's key (passes.Request.key), on the run that holds its examples
SHARD_TAG = "filterviz.exemplars_shard"


@dataclass
class Outcome:
    """What a pass recorded: where its examples are, and how it went."""

    results_dir: Path
    request: Request
    read: int = 0  # images read
    skipped: List[str] = field(default_factory=list)  # files that could not be decoded
    seconds: float = 0.0
    run_id: Optional[str] = None
    run_url: Optional[str] = None
    ui_command: Optional[str] = None
    resumed_from: int = 0  # images a checkpoint already held
    already_recorded: bool = False  # an earlier command finished this very pass: nothing was redone


def load(cfg: DictConfig):
    """The model the config names, and its store for a logged model (models:/, runs:/)."""
    logged = str(cfg.model.path or "").startswith(models.MLFLOW_URIS)
    store = tracking.resolve_store(cfg.tracking.uri).uri if logged else None
    return models.load_model(cfg.model.name, cfg.model.weights, cfg.model.path, precision(cfg),
                             cfg.model.get("include_top", False), store)


def precision(cfg: DictConfig) -> str:
    """The config's precision, typed (an Enum) in a job, plain in a callback's copy of the config."""
    return str(getattr(cfg.precision, "value", cfg.precision))


def request_for(cfg: DictConfig, model: keras.Model, layers, examples_cfg: DictConfig) -> Request:
    """The pass `examples_cfg` asks for (data, k, ...) on `layers` of the config's model, as a run feeds it."""
    check_examples(examples_cfg)
    files = image_files(examples_cfg.data)
    chosen = [layer.name for layer in select_layers(models.channel_layers(model, cfg.input_size), layers, "layers")]
    for name in chosen:
        models.check_input_size(models.cut_at(model, name), cfg.input_size)
    fed = models.preprocess_mode(cfg.model.name, cfg.model.get("preprocess")) if cfg.preprocess else "none"
    return Request(files, chosen, examples_cfg.k, [float(q) for q in examples_cfg.quantiles], cfg.input_size,
                   examples_cfg.batch_size, fed, precision(cfg), models.fingerprint(model),
                   Path(examples_cfg.checkpoints).resolve(), float(examples_cfg.checkpoint_seconds))


def params_of(cfg: DictConfig, request: Request) -> Dict[str, str]:
    flat = tracking.flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    kept = {k: v for k, v in flat.items() if settings.is_setting(k) and k not in ("shard", "model.default_layer")
            and v != "None" and not k.startswith("checkpoint")}
    return {**kept, "layers": ",".join(request.layers), "model.preprocess": request.fed, "images": str(len(request.files))}


def run(cfg: DictConfig, output_dir: Path, command: str, parent_run_id: Optional[str] = None) -> Outcome:
    """The pass (or, with a parent, its shard `cfg.shard` of `cfg.shards`) that `cfg` asks for."""
    check_examples(cfg)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tracker = tracking.Tracker(tracking.resolve_store(cfg.tracking.uri), cfg.tracking.experiment) \
        if cfg.tracking.enabled else None
    model = load(cfg)
    request = request_for(cfg, model, OmegaConf.to_object(cfg.layers) if OmegaConf.is_config(cfg.layers)
                          else cfg.layers, cfg)
    return find(request, model, cfg.data, output_dir / "results", tracker, command, params_of(cfg, request),
                parent_run_id, cfg.shard, cfg.shards, settings.model_label(cfg.model.name, cfg.model.path),
                dict(cfg.tracking.tags))


def find(request: Request, model: keras.Model, data: str, results: Path, tracker: Optional[tracking.Tracker],
         command: str = "", params: Optional[Dict[str, str]] = None, parent_run_id: Optional[str] = None,
         shard: int = 0, shards: int = 1, label: str = "", tags: Optional[Dict[str, str]] = None,
         channels: Optional[Dict[str, List[int]]] = None) -> Outcome:
    """The pass of `request` (shard `shard` of `shards`), from its checkpoint, into `results`; with a
    tracker, into its own run (under `parent_run_id`), or read back from the run of an earlier
    command that finished it. `channels`: per layer, the filters to draw (default: every one)."""
    sharded = shards > 1
    folders.usable_folder(results, "the examples' folder")  # before the pass, not after it
    if tracker is not None and not sharded:
        done = recorded(tracker, request.key)
        if done is not None:
            results.mkdir(parents=True, exist_ok=True)
            for name in (examples.FOLDER, examples.TABLE):
                tracker.client.download_artifacts(done, name, str(results))
            print(f"these examples are already recorded: MLflow run {done} (the same pass, finished); "
                  f"copied to {results}")
            skipped = results / examples.FOLDER / "skipped.txt"
            metrics = tracker.client.get_run(done).data.metrics
            return Outcome(results, request, int(metrics.get("images_read", 0)),
                           skipped.read_text().splitlines() if skipped.is_file() else [],
                           metrics.get("seconds", 0.0), done, tracker.run_url(done), tracker.store.ui_command(),
                           already_recorded=True)
    print(f"{label} examples: {len(request.files)} image(s) of {data}, {len(request.layers)} layer(s), "
          f"top {request.k}" + (f", shard {shard + 1} of {shards}" if sharded else ""))
    folder = request.folder(shard, shards)
    before = ShardState.load(folder)
    resumed = 0 if before is None else int(before.seen.sum())
    if resumed and not before.complete:
        print(f"resuming from the checkpoint in {folder}: {resumed} image(s) already read")
    if tracker is None:
        state = run_shard(request, model, shard, shards)
        if sharded:  # the launching process merges the shards
            return Outcome(results, request, int(state.seen.sum()), seconds=state.seconds, resumed_from=resumed)
        return finish(request, model, [state], 1, results, data, resumed, channels)
    name = f"{label} examples" + (f" · shard {shard + 1}/{shards}" if sharded else "")
    tags = {**provenance.provenance_tags(command), KEY_TAG if not sharded else SHARD_TAG: request.key, **(tags or {})}
    with tracker.run(name, params or {}, tags, parent_run_id) as run_id:
        state = run_shard(request, model, shard, shards, on_checkpoint=progress(tracker, run_id))
        progress(tracker, run_id, every=0)(state)
        if sharded:
            return Outcome(results, request, int(state.seen.sum()), seconds=state.seconds, run_id=run_id,
                           resumed_from=resumed)
        outcome = finish(request, model, [state], 1, results, data, resumed, channels)
        keep(tracker, run_id, outcome)
    return outcome


def finish(request: Request, model: keras.Model, states: List[ShardState], shards: int, results: Path,
           data: str, resumed: int = 0, channels: Optional[Dict[str, List[int]]] = None) -> Outcome:
    """The merged pass written as strips, arrays and table into `results`."""
    found = merged(request, model, states, shards)
    started = time.perf_counter()
    examples.write(found, request.files, Path(data), model, request.input_size, request.fed, results, channels)
    skipped = [str(f.relative_to(Path(data))) for f, seen in zip(request.files, found.seen) if not seen]
    if skipped:
        (results / examples.FOLDER / "skipped.txt").write_text("\n".join(skipped) + "\n")
        print(f"note: {len(skipped)} file(s) could not be read as images and were skipped (listed in "
              f"{results / examples.FOLDER / 'skipped.txt'})", file=sys.stderr)
    read = int(found.seen.sum())
    print(f"examples of {read} image(s) in {found.seconds:.1f} s ({read / max(found.seconds, 1e-9):.1f} images/s), "
          f"drawn in {time.perf_counter() - started:.1f} s: {results / examples.FOLDER}")
    return Outcome(results, request, read, skipped, found.seconds, resumed_from=resumed)


def progress(tracker: tracking.Tracker, run_id: str, every: float = 10.0):
    """After a checkpoint: how far the pass is, in the run, at most `every` seconds apart (and its
    heartbeat: a pass on another host is not taken for dead)."""
    last = [float("-inf")]

    def log(state: ShardState) -> None:
        if time.monotonic() - last[0] >= every:
            last[0] = time.monotonic()
            tracker.log_values(run_id, images_read=float(state.seen.sum()), seconds=state.seconds)
            tracker.client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))
    return log


def keep(tracker: tracking.Tracker, run_id: str, outcome: Outcome) -> None:
    """The examples into the run: strips, arrays and the table (MLflow's log_table, so the UI shows it)."""
    try:
        results = outcome.results_dir
        table = json.loads((results / examples.TABLE).read_text())
        tracker.client.log_table(run_id, table, examples.TABLE)
        tracker.log_artifacts(run_id, results / examples.FOLDER, examples.FOLDER)
        tracker.log_values(run_id, images_read=outcome.read, images_skipped=len(outcome.skipped),
                           seconds=outcome.seconds, images_per_second=outcome.read / max(outcome.seconds, 1e-9))
    except Exception as e:
        raise ConfigError(f"lost the MLflow store {tracker.store.uri} while recording ({first_line(e)}): "
                          f"the examples are in {outcome.results_dir}") from None
    outcome.run_id, outcome.run_url = run_id, tracker.run_url(run_id)
    outcome.ui_command = tracker.store.ui_command()


def recorded(tracker: tracking.Tracker, key: str) -> Optional[str]:
    """The FINISHED run that holds the examples of the pass `key`, if a command made one."""
    found = tracker.client.search_runs([tracker.experiment_id],
                                       f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None
