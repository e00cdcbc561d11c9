"""`python -m filterviz.atlas`: the atlas's own loop, run by its Hydra sweeper in the launching process.

Plans the jobs of the filters the store does not hold yet, hands them to Hydra's launcher
(in-process, joblib or SLURM) a batch at a time, prints a line per finished job, and at the
end gathers every job's pictures and figures into the atlas page, logged to the parent run.
"""

import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, List, Sequence

from omegaconf import DictConfig, OmegaConf

from filterviz.api import Atlas
from filterviz.atlas import plan, record
from filterviz.core import models
from filterviz.errors import ConfigError
from filterviz.recording import provenance, settings, sweep, tracking

# Launches one batch of jobs, each a list of overrides, numbered from the given index; returns
# when all have ended (Hydra's Launcher.launch).
Launch = Callable[[List[List[str]], int], object]
SITE = "atlas"  # the page's folder in the sweep folder and in the parent run's artifacts


def user_overrides(arguments: Sequence[str]) -> List[str]:
    """The command line's settings, without the atlas's own keys or Hydra's."""
    return [a for a in arguments if settings.is_setting(settings.override_key(a))
            and settings.override_key(a) not in ("layer", "filters")]


def make_atlas(config: DictConfig, arguments: Sequence[str], launch: Launch, batch: int) -> Atlas:
    cfg = config
    if not cfg.tracking.enabled:
        raise ConfigError("the atlas resumes from its MLflow store: it needs tracking (not tracking=off)")
    from filterviz.config import check_ranges

    check_ranges(cfg)  # once here, not as a failure in every job
    from filterviz.job import say_device

    say_device()  # the jobs' device, said once
    model = models.load_model(cfg.model.name, None if cfg.model.name != "file" else cfg.model.weights,
                              cfg.model.path)  # the architecture only: each job loads the weights
    layers = plan.select_layers(models.channel_layers(model, cfg.input_size), cfg.atlas.layers)
    for layer in layers:
        models.check_input_size(models.cut_at(model, layer.name), cfg.input_size)
    del model
    if cfg.exemplars.data is not None:  # a wrong folder says so now, not after the pictures
        from filterviz.config import check_examples
        from filterviz.core.exemplars import image_files

        check_examples(cfg.exemplars, "exemplars.")
        image_files(cfg.exemplars.data)

    job_cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True,
                                     enum_to_str=True)
    picture = {k: v for k, v in settings.picture_params(tracking.flatten(job_cfg)).items()
               if k not in ("layer", "filters", "preset")}
    atlas_id = plan.identity(picture)
    base = user_overrides(arguments)
    tracker = tracking.Tracker(tracking.resolve_store(cfg.tracking.uri), cfg.tracking.experiment)
    name = " ".join([f"{settings.model_label(cfg.model.name, cfg.model.path)} atlas", *(["·", *base] if base else [])])
    command = shlex.join(["python", "-m", "filterviz.atlas", *arguments])
    parent, resumed = record.open_parent(tracker, atlas_id, name,
                                         {**picture, "atlas.layers": ",".join(l.name for l in layers)},
                                         provenance.provenance_tags(command))
    keep_model_file(tracker, parent, cfg.model)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # jobs find their parent in the sweep folder; a stop signal ends it KILLED
    sweep.begin(sweep_dir, sweep.SweepRecord(tracker.store.uri, cfg.tracking.experiment, parent, []))

    done = record.done_filters(tracker.finished_children(parent))
    jobs = plan.plan_jobs(layers, done, cfg.batch_size, cfg.atlas.chunk, cfg.atlas.per_layer)
    sizes = {layer.name: plan.shown(layer, cfg.atlas.per_layer) for layer in layers}
    total = sum(sizes.values())
    cost = {layer.name: layer.cost for layer in layers}
    print(f"atlas {atlas_id} of {settings.model_label(cfg.model.name, cfg.model.path)}: {len(layers)} layer(s), {total} filters in "
          + (f"{len(jobs)} job(s)" if not resumed else
             f"{len(jobs)} job(s) left ({sum(len(j.filters) for j in jobs)} filters; the others are done)")
          + f"; MLflow run {parent}")

    start, spent, left = time.monotonic(), 0.0, sum(cost[j.layer] * len(j.filters) for j in jobs)
    warm = None  # (clock, cost spent) when the first batch ended: that batch also paid the start-up
    finished = total - sum(len(j.filters) for j in jobs)
    failed: List[str] = []
    for first in range(0, len(jobs), batch):
        chunk = jobs[first : first + batch]
        launch([[*arguments, *job.overrides()] for job in chunk], first)
        for number, job in enumerate(chunk, first):
            error = sweep_dir / str(number) / sweep.ERROR_FILE
            if error.is_file():
                failed.append(f"  {job.name}: {error.read_text().splitlines()[1]}")
            else:
                finished += len(job.filters)
            spent += cost[job.layer] * len(job.filters)
            print(f"atlas: {job.name} {'failed' if error.is_file() else 'done'} · {finished}/{total} filters · "
                  f"{_clock(time.monotonic() - start)} elapsed · {_eta(warm, spent, left)}", flush=True)
        warm = warm or (time.monotonic(), spent)

    runs = tracker.finished_children(parent)
    site_dir = sweep_dir / SITE
    layers_data = record.gather(tracker, runs, site_dir, base, sizes)
    figures = dict(record.FIGURES)
    if cfg.exemplars.data is not None:
        beside_examples(cfg, tracker, parent, layers_data, site_dir, command)
        figures.update(record.VS_EXAMPLES)
    from filterviz.atlas.page import write_site

    index = write_site({"title": name, "model": settings.model_label(cfg.model.name, cfg.model.path), "settings": dict(sorted(picture.items())),
                        "run_id": parent, "run_url": tracker.run_url(parent), "figures": figures,
                        "layers": layers_data}, site_dir)
    tracker.client.log_artifacts(parent, str(site_dir), SITE)
    tracker.end_parent(parent, failed=len(failed))
    sweep.ended()
    print(f"atlas page: {index.resolve()}")
    print(f"MLflow run: {parent}  (the page is also its artifact {SITE}/index.html); see it: "
          f"{tracker.store.ui_command()}")
    if failed:
        print(f"error: {len(failed)} job(s) of the atlas failed (run the same command again to redo them):",
              file=sys.stderr)
        print("\n".join(failed), file=sys.stderr)
    return Atlas(index.resolve(), parent, tracker.run_url(parent), layers_data, failed)


def beside_examples(cfg: DictConfig, tracker: tracking.Tracker, parent: str, layers_data: List[dict], site_dir: Path,
                    command: str) -> None:
    """The atlas's dataset examples: one pass over `exemplars.data` for all its layers, recorded in a
    run under the atlas (read back if an earlier command finished it), its strips in the site, and
    per filter its picture's peak activation over its best example's (`vs_examples`)."""
    import numpy as np

    from filterviz.exemplars import job as exemplars_job
    from filterviz.exemplars.examples import FOLDER, strip_name

    model = exemplars_job.load(cfg)
    request = exemplars_job.request_for(cfg, model, [layer["name"] for layer in layers_data], cfg.exemplars)
    exemplars_job.find(request, model, cfg.exemplars.data, site_dir, tracker, command,
                       {**exemplars_job.params_of(cfg.exemplars, request), "model.name": cfg.model.name},
                       parent, label=settings.model_label(cfg.model.name, cfg.model.path))
    del model
    for layer in layers_data:
        with np.load(site_dir / FOLDER / "arrays" / f"{layer['name']}.npz") as saved:
            best = saved["values"][:, 0]
        for f in layer["filters"]:
            f["examples"] = strip_name(layer["name"], f["filter"])
            peak = f["figures"].get("peak_activation")
            top = float(best[f["filter"]])
            f["figures"]["vs_examples"] = peak / top if peak is not None and np.isfinite(top) and top > 0 else None


def keep_model_file(tracker: tracking.Tracker, parent: str, model: DictConfig) -> None:
    """A model file's copy in the atlas's parent run, once: every picture stays reproducible
    (python -m filterviz.reproduce looks there) after the file is moved, changed or, for a model
    the Python API saved from memory, deleted."""
    if model.name != "file" or not model.path or str(model.path).startswith(models.MLFLOW_URIS):
        return
    name = Path(model.path).name
    if name not in {a.path for a in tracker.client.list_artifacts(parent)}:
        tracker.client.log_artifact(parent, str(model.path))


def _eta(warm, spent: float, left: float) -> str:
    """Time left at the pace since the first batch (whose imports, model load and first trace
    would make the cheap first layer look as slow as the deepest), per unit of layer cost."""
    if spent >= left:
        return "ETA 0:00:00"
    if warm is None or spent <= warm[1]:
        return "ETA after the next job"
    return f"ETA {_clock((time.monotonic() - warm[0]) / (spent - warm[1]) * (left - spent))}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
