"""A sharded pass (`shards=N`): its parent run, made before any job starts, and the merge of the
shards into it after the last, in the launching process (Hydra's callback). The merge is the
unsharded pass's ending, so a sharded pass records what the whole one would."""

import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from filterviz import stops
from filterviz.errors import ConfigError, first_line


class ShardsCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stops.stop_joblib_workers_too(config.hydra.launcher._target_)  # before the launcher starts them
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not config.tracking.enabled:
            return
        from filterviz.core.hardware import import_tensorflow_quietly
        from filterviz.recording import provenance, settings, sweep, tracking

        import_tensorflow_quietly()
        tracker = tracking.Tracker(tracking.resolve_store(config.tracking.uri), config.tracking.experiment)
        command = shlex.join(["python", "-m", "filterviz.exemplars", *sys.argv[1:]])
        name = f"{settings.model_label(config.model.name, config.model.path)} examples · {config.shards} shards"
        parent = tracker.start_parent(name, {**provenance.provenance_tags(command),
                                             "filterviz.sweep_dir": str(sweep_dir.resolve())})
        sweep.begin(sweep_dir, sweep.SweepRecord(tracker.store.uri, config.tracking.experiment, parent, ["shard"]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from filterviz.recording import sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        record = sweep.read_record(sweep_dir)
        failures = sorted(sweep_dir.glob(f"*/{sweep.ERROR_FILE}"))
        tracker = None
        if record is not None:
            from filterviz.recording import tracking

            tracker = tracking.Tracker(tracking.Store(record.uri, None), record.experiment)
        if failures:
            print(f"error: {len(failures)} shard(s) failed; the same command again resumes them:", file=sys.stderr)
            for path in failures:
                print(f"  {path.read_text().splitlines()[1]}", file=sys.stderr)
            if tracker is not None:
                tracker.end_parent(record.parent_run_id, failed=len(failures))
                sweep.ended()
            sys.exit(1)
        try:
            cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])  # hydra's job keys are unset here
            outcome = merge(cfg, sweep_dir)
            if tracker is not None:
                from filterviz.exemplars import job

                tracker.log_params(record.parent_run_id, job.params_of(cfg, outcome.request))
                tracker.client.set_tag(record.parent_run_id, job.KEY_TAG, outcome.request.key)
                job.keep(tracker, record.parent_run_id, outcome)
                tracker.end_parent(record.parent_run_id, failed=0)
                sweep.ended()
                print(f"MLflow run: {record.parent_run_id} (the {config.shards} shards merged)")
                print(f"see it:     {tracker.store.ui_command()}")
        except Exception as e:  # Hydra would make any error of a callback a warning, and exit 0
            if tracker is not None:
                tracker.end_parent(record.parent_run_id, failed=1)
                sweep.ended()
            said = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {first_line(e)}"
            print(f"error: merging the shards: {said}", file=sys.stderr)
            sys.exit(1)


def merge(cfg: DictConfig, sweep_dir: Path):
    """Every shard's state (each complete: its job ended), merged and written into the sweep's results."""
    from filterviz.exemplars import job
    from filterviz.exemplars.passes import ShardState

    model = job.load(cfg)
    layers = OmegaConf.to_object(cfg.layers) if OmegaConf.is_config(cfg.layers) else cfg.layers
    request = job.request_for(cfg, model, layers, cfg)
    states = [ShardState.load(request.folder(i, cfg.shards)) for i in range(cfg.shards)]
    missing = [i for i, state in enumerate(states) if state is None or not state.complete]
    if missing:
        raise ConfigError(f"shard(s) {', '.join(map(str, missing))} did not finish: the same command again resumes them")
    return job.finish(request, model, states, cfg.shards, sweep_dir / "results", cfg.data)
