"""Speed and memory of the atlas beside the bare pass of the network, layer by layer, and the
whole atlas projected.

Runs `python -m filterviz.atlas` as a user does (in-process launcher, a fresh SQLite store) on
the first `--per-layer` filters of each convolution, then reads back every job's run: per layer
the filter-iterations per second of its ascent (dead filters' retries and the quality figures
included), and each job's overhead (its run's wall time minus that: loading the model, tracing,
writing the files, recording). The whole atlas is projected from those with the atlas's own job
plan, layer by layer. Beside
it, in the same sitting and the same precision, the bare pass: a compiled forward pass and input
gradient of the network cut at that layer, on a batch of the atlas's size, nothing else (no
parameterization, views, optimizer or quality). The whole network weighs each layer by its
share of the work (its filters x iterations at its speed), with the atlas's own job plan.
Peak memory: the atlas process's maximum resident set, once for the costliest layer alone and
once for all of them, to show it does not grow with the atlas.

    python experiments/atlas_benchmark.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5
    python experiments/atlas_benchmark.py --precisions float32 bfloat16     # e.g. on a GPU
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_atlas(args, layers: str, store: Path, *extra: str, per_layer: Optional[int] = None) -> tuple:
    """(seconds, peak resident MiB, output) of one atlas command in its own process."""
    command = [sys.executable, "-m", "filterviz.atlas", f"model={args.model}", f"iters={args.iters}",
               f"input_size={args.size}", f"atlas.per_layer={per_layer or args.per_layer}", f"atlas.layers={layers}",
               f"tracking.uri=sqlite:///{store}/mlflow.db", *extra, *args.overrides]
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


def atlas_speeds(args, layers, precision: Optional[str], site: Optional[Path]) -> tuple:
    """Per layer, filter-iterations per second of its jobs' ascent (dead filters' retries and the
    quality figures included), each job's overhead (its run's wall time minus that: loading the
    model, tracing, writing and recording), the atlas's seconds, peak memory and device line."""
    from mlflow.tracking import MlflowClient

    extra = [f"precision={precision}"] if precision else []
    with tempfile.TemporaryDirectory() as store:
        if args.per_layer == "job":  # one whole job of each layer, as the atlas plans it: its own batches and retries
            from filterviz.atlas.plan import chunk_size

            deepest, seconds, peak, out = max(layer.cost for layer in args.every), 0.0, 0.0, ""
            for layer in layers:
                size = chunk_size(layer, deepest, args.batch, None)
                took, most, said = run_atlas(args, layer.name, Path(store), *extra, per_layer=size)
                seconds, peak, out = seconds + took, max(peak, most), out + said
        else:
            seconds, peak, out = run_atlas(args, "all", Path(store), *extra)
        if site:
            [page] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("atlas page: ")]
            shutil.copytree(Path(page).parent, site, dirs_exist_ok=True)
        client = MlflowClient(f"sqlite:///{store}/mlflow.db")
        runs = [r for r in client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
                if r.data.tags.get("filterviz.sweep") != "atlas"]
    ascent, work, overheads = {}, {}, []
    for run in runs:
        layer = run.data.tags["filterviz.layer"]
        ascent[layer] = ascent.get(layer, 0.0) + run.data.metrics["seconds"]
        work[layer] = work.get(layer, 0) + len(run.data.tags["filterviz.filters"].split(",")) * args.iters
        overheads.append((run.info.end_time - run.info.start_time) / 1000 - run.data.metrics["seconds"])
    device = next((line for line in out.splitlines() if line.startswith("device: ")), "device: ?")
    speeds = {layer.name: work[layer.name] / ascent[layer.name] for layer in layers}
    return speeds, statistics.mean(overheads), seconds, peak, device


def bare_speeds(args, layers, precision: str, batch: int) -> dict:
    """Per layer, filter-iterations per second of a compiled forward pass and input gradient of the
    network cut at it, on `batch` images: the limit the atlas's step is measured against."""
    import tensorflow as tf

    from filterviz.core import models

    model = models.load_model(args.model, args.weights or "imagenet", precision=precision)
    speeds = {}
    for layer in layers:
        extractor = models.cut_at(model, layer.name).extractor
        step = tf.function(lambda images: forward_and_input_gradient(extractor, images), autograph=False)
        images = tf.random.stateless_uniform((batch, args.size, args.size, 3), seed=[0, 0])
        step(images).numpy()  # traced and warmed up, untimed
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.bare_steps):
                grads = step(images)
            grads.numpy()
            rounds.append(batch * args.bare_steps / (time.perf_counter() - start))
        speeds[layer.name] = statistics.median(rounds)
    return speeds


def forward_and_input_gradient(extractor, images):
    import tensorflow as tf

    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(images)
        activations = tf.cast(extractor(images, training=False), tf.float32)
        total = tf.reduce_sum(tf.reduce_mean(activations, axis=[1, 2])[:, 0])  # one channel per image, as the atlas
    return tape.gradient(total, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", help="a weights file (default: the model's ImageNet download)")
    parser.add_argument("--per-layer", type=lambda v: v if v == "job" else int(v), default=16,
                        help="filters measured per layer, or 'job': one whole job of each layer as the atlas plans "
                             "it (its batches and dead-filter retries as in the whole atlas; slower)")
    parser.add_argument("--iters", type=int, default=64, help="iterations (the default recipe's: 64)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--layers", default="all", help="the layers measured: all, a name or a shell pattern "
                        "(the whole-network line then covers those alone)")
    parser.add_argument("--precisions", nargs="+", help="float32 and/or bfloat16 (default: the machine's default)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the bare pass (median)")
    parser.add_argument("--bare-steps", type=int, default=8, help="steps per timed round of the bare pass")
    parser.add_argument("--no-memory", action="store_true", help="skip the costliest layer's atlas alone")
    parser.add_argument("--site", type=Path, help="keep the measured atlas's page here (e.g. for screenshots)")
    parser.add_argument("overrides", nargs="*", help="more settings for the atlas, e.g. batch_size=32")
    args = parser.parse_args()
    if args.weights and Path(args.weights).is_file():
        args.weights = str(Path(args.weights).resolve())  # the atlas runs in a folder of its own

    import keras

    from filterviz.atlas.plan import chunk_size, plan_jobs, select_layers
    from filterviz.config import register_configs
    from filterviz.core import hardware, models

    register_configs()
    every = models.conv_layers(models.load_model(args.model, None), args.size)
    layers, args.every = select_layers(every, args.layers), every
    batch = args.batch = next((int(o.split("=")[1]) for o in args.overrides if o.startswith("batch_size=")), 16)
    jobs = [job for job in plan_jobs(every, {}, batch_size=batch) if job.layer in {layer.name for layer in layers}]
    filters = sum(layer.filters for layer in layers)
    print(f"{args.model} atlas at {args.size} px, {args.iters} iterations, measured on "
          f"{'one job' if args.per_layer == 'job' else f'{args.per_layer} filters'} of "
          f"each of {len(layers)} layers, {os.cpu_count()} CPUs ({keras.backend.backend()}); the bare pass on "
          f"batches of {batch}")
    for precision in args.precisions or [None]:
        speed, overhead, seconds, peak, device = atlas_speeds(args, layers, precision, args.site)
        chosen = precision or hardware.fastest_precision(args.model)
        bare = bare_speeds(args, layers, chosen, batch)
        # the whole atlas as planned: each layer's filters at its measured pace, plus its jobs' overhead
        jobs_of = {layer.name: sum(1 for j in jobs if j.layer == layer.name) for layer in layers}
        atlas = {layer.name: layer.filters * args.iters / (layer.filters * args.iters / speed[layer.name]
                                                            + overhead * jobs_of[layer.name]) for layer in layers}
        print(f"\n{device}; precision={chosen}: the sample took {seconds:.0f} s; job overhead "
              f"{overhead:.1f} s (model load, tracing, files, MLflow)")
        print(f"  {'layer':<16} {'ascent fi/s':>11} {'jobs':>4} {'atlas fi/s':>10} {'bare fi/s':>10} {'atlas/bare':>10}")
        for layer in layers:
            print(f"  {layer.name:<16} {speed[layer.name]:11.1f} {jobs_of[layer.name]:4d} {atlas[layer.name]:10.1f} "
                  f"{bare[layer.name]:10.1f} {atlas[layer.name] / bare[layer.name]:10.2f}")
        projected = sum(layer.filters * args.iters / atlas[layer.name] for layer in layers)
        floor = sum(layer.filters * args.iters / bare[layer.name] for layer in layers)
        worst = min(layers, key=lambda layer: atlas[layer.name] / bare[layer.name])
        print(f"  whole network (each layer by its share of the work): atlas / bare = {floor / projected:.2f} "
              f"(target >= 0.8), lowest {worst.name} {atlas[worst.name] / bare[worst.name]:.2f} (target >= 0.6)")
        print(f"  whole atlas: {filters} filters in {len(jobs)} jobs, projected {timedelta(seconds=round(projected))}; "
              f"the bare pass's floor {timedelta(seconds=round(floor))}")
        print(f"  peak memory of the atlas process, all {len(layers)} layers: {peak:.0f} MiB")
    if not args.no_memory:
        costliest = max(layers, key=lambda layer: layer.cost)
        size = chunk_size(costliest, costliest.cost, batch, None) if args.per_layer == "job" else None  # one job
        with tempfile.TemporaryDirectory() as alone:
            _, alone_peak, _ = run_atlas(args, costliest.name, Path(alone), per_layer=size)
        print(f"peak memory of the atlas process for {costliest.name} alone: {alone_peak:.0f} MiB")


if __name__ == "__main__":
    main()
