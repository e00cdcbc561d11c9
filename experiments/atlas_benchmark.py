"""Speed and memory of the atlas, measured on a sample of every layer, and the whole atlas projected.

Runs `python -m filterviz.atlas` as a user does (in-process launcher, a fresh SQLite store) on
the first `--per-layer` filters of each convolution, then reads back every job's run: per layer
the filter-iterations per second of the ascent (`filter_iters_per_second`, which includes dead
filters' retries and the quality figures' passes) and each job's overhead (run wall time
minus its ascent's). Projects the whole atlas at `--iters` from those, layer by layer, with the
atlas's own job plan. Peak memory: the atlas process's maximum resident set, once for the
costliest layer alone and once for all of them, to show it does not grow with the atlas.

    python experiments/atlas_benchmark.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_atlas(args, layers: str, store: Path) -> tuple:
    """(seconds, peak resident MiB) of one atlas command in its own process."""
    command = [sys.executable, "-m", "filterviz.atlas", f"model={args.model}", f"iters={args.iters}",
               f"input_size={args.size}", f"atlas.per_layer={args.per_layer}", f"atlas.layers={layers}",
               f"tracking.uri=sqlite:///{store}/mlflow.db", *args.overrides]
    if args.weights:
        command.append(f"model.weights={args.weights}")
    # A wrapper process per atlas, so its children's peak is this atlas's alone.
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", measure, *command], cwd=store, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the atlas failed:\n{done.stderr[-3000:]}")
    peak_kib = int(done.stderr.strip().splitlines()[-1].split()[-1])
    return seconds, peak_kib / 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", help="a weights file (default: the model's ImageNet download)")
    parser.add_argument("--per-layer", type=int, default=16, help="filters measured per layer")
    parser.add_argument("--iters", type=int, default=64, help="iterations (the default recipe's: 64)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--site", type=Path, help="keep the measured atlas's page here (e.g. for screenshots)")
    parser.add_argument("overrides", nargs="*", help="more settings for the atlas, e.g. batch_size=32")
    args = parser.parse_args()

    import keras
    from mlflow.tracking import MlflowClient

    from filterviz.atlas.plan import plan_jobs
    from filterviz.core import models

    layers = models.conv_layers(models.load_model(args.model, None), args.size)
    with tempfile.TemporaryDirectory() as small_dir, tempfile.TemporaryDirectory() as whole_dir:
        costliest = max(layers, key=lambda layer: layer.cost).name
        _, alone_peak, _ = run_atlas(args, costliest, Path(small_dir))
        seconds, peak, out = run_atlas(args, "all", Path(whole_dir))
        if args.site:
            [page] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("atlas page: ")]
            shutil.copytree(Path(page).parent, args.site, dirs_exist_ok=True)
        client = MlflowClient(f"sqlite:///{whole_dir}/mlflow.db")
        runs = [r for r in client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
                if r.data.tags.get("filterviz.sweep") != "atlas"]

    speed, overheads = {}, []
    for run in runs:
        speed[run.data.tags["filterviz.layer"]] = run.data.metrics["filter_iters_per_second"]
        overheads.append((run.info.end_time - run.info.start_time) / 1000 - run.data.metrics["seconds"])
    overhead = sum(overheads) / len(overheads)
    jobs = plan_jobs(layers, {}, batch_size=16)
    projected = sum(layer.filters * args.iters / speed[layer.name] for layer in layers) + overhead * len(jobs)
    filters = sum(layer.filters for layer in layers)
    print(f"{args.model} atlas at {args.size} px, {args.iters} iterations, measured on {args.per_layer} filters "
          f"of each of {len(layers)} layers ({len(runs)} jobs, {seconds:.0f} s) on {os.cpu_count()} CPUs "
          f"({keras.backend.backend()}, GPUs: {len(__import__('tensorflow').config.list_physical_devices('GPU'))})")
    for layer in layers:
        print(f"  {layer.name:<16} {speed[layer.name]:8.1f} filter-iterations/s")
    print(f"  job overhead (run wall time minus ascent): {overhead:.1f} s a job")
    print(f"whole atlas: {filters} filters in {len(jobs)} jobs, projected {timedelta(seconds=round(projected))} "
          f"({filters * args.iters / projected:.1f} filter-iterations/s overall)")
    print(f"peak memory of the atlas process: {alone_peak:.0f} MiB for {costliest} alone, {peak:.0f} MiB for all "
          f"{len(layers)} layers")


if __name__ == "__main__":
    main()
