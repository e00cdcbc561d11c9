"""The dataset-examples pass against its limit, and its memory against the number of images.

Speed: images per second of the pass (reading, decoding, resizing and preprocessing with tf.data,
the forward pass to every layer, the top k, the maxima spill, checkpoints), over a bare batched
forward pass of the same multi-output model on the same images decoded beforehand: the limit.
Both in this process, alternated, best of `--repeats` (each compiled once: the pass's first repeat
includes its tracing).

Memory: the peak resident memory of the whole command (`python -m filterviz.exemplars`, tracking
off) over N and over 10 N images, each in its own process.

    python experiments/exemplars_benchmark.py [--images 1024] [--input-size 96] [--precision float32] [--memory-images 200]

Generated scenes (experiments/scenes.py); VGG16 with ImageNet weights when ../shared/weights has
them (else random ones: the same work). Every figure names this machine's CPU.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.scenes import make_scenes  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights" / "vgg16_imagenet_notop.weights.h5"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return "unknown CPU"


def model_keys() -> list:
    return ["model=vgg16", f"model.weights={WEIGHTS if WEIGHTS.is_file() else 'null'}"]


def speed(folder: Path, input_size: int, batch: int, repeats: int, precision: str = None) -> None:
    from filterviz.core.hardware import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    from filterviz.api import compose
    from filterviz.core import exemplars
    from filterviz.core.models import preprocessor
    from filterviz.exemplars import job
    from filterviz.exemplars.passes import run_shard

    cfg = compose([f"data={folder}", *model_keys(), f"input_size={input_size}", f"batch_size={batch}",
                   "tracking=off", "checkpoint_seconds=30", *([f"precision={precision}"] if precision else [])],
                  "exemplars")
    model = job.load(cfg)
    files = exemplars.image_files(folder)
    decoded = [images for images, _ in exemplars.dataset(files, range(len(files)), input_size, 3, batch, None)]
    with tempfile.TemporaryDirectory() as checkpoints:
        cfg.checkpoints = checkpoints
        request = job.request_for(cfg, model, "all", cfg)
        forward = exemplars.layers_model(model, request.layers)
        bare_step = tf.function(lambda images: forward(images, training=False), reduce_retracing=True)
        maxima_step = exemplars.maxima_step(model, request.layers)
        preprocess = preprocessor(request.fed)
        fed = [preprocess(images) for images in decoded]
        bare_step(fed[0]), maxima_step(fed[0])  # traced before timing
        n = sum(len(images) for images in decoded)
        timings = {"bare": [], "maxima": [], "pass": []}
        for attempt in range(repeats):
            start = time.perf_counter()
            for images in fed:
                [output.numpy() for output in bare_step(images)[-1:]]  # waits for the last layer
            timings["bare"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            for images in fed:
                maxima_step(images)
            timings["maxima"].append(n / (time.perf_counter() - start))
            request.checkpoints = Path(checkpoints) / str(attempt)  # a fresh pass each time
            start = time.perf_counter()
            run_shard(request, model)
            timings["pass"].append(n / (time.perf_counter() - start))
    best = {name: max(values) for name, values in timings.items()}
    runs = {name: ", ".join(f"{v:.1f}" for v in values) for name, values in timings.items()}
    print(f"machine: {cpu_name()}; VGG16, {len(request.layers)} layers, {n} images at {input_size} px, "
          f"batch {batch}, precision {request.precision}")
    print(f"bare forward pass to every layer (the limit):     {best['bare']:.1f} images/s ({runs['bare']})")
    print(f"forward pass and spatial maxima, in the graph:     {best['maxima']:.1f} images/s ({runs['maxima']})")
    print(f"the pass (tf.data decode, top k, maxima spill):    {best['pass']:.1f} images/s ({runs['pass']})")
    print(f"speed ratio, pass / bare forward pass: {best['pass'] / best['bare']:.2f}")


def peak_memory(folder: Path, input_size: int, workdir: Path) -> int:
    """Peak resident memory (bytes) of the whole command over `folder`, in its own process."""
    process = subprocess.Popen([sys.executable, "-m", "filterviz.exemplars", f"data={folder}", *model_keys(),
                                f"input_size={input_size}", "tracking=off", f"checkpoints={workdir / 'checkpoints'}"],
                               cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"the pass failed: {process.stderr.read()[-1000:]}")
    return usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # enough that the pass's one-off start (its first batch) weighs as little as in a real pass
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], help="default: this machine's")
    parser.add_argument("--memory-images", type=int, default=200)
    parser.add_argument("--memory-input-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_scenes(tmp / "speed", args.images, seed=1)
        speed(tmp / "speed", args.input_size, args.batch, args.repeats, args.precision)
        peaks = []
        for count in (args.memory_images, 10 * args.memory_images):
            folder = tmp / f"memory{count}"
            make_scenes(folder, count, seed=2)
            (tmp / f"run{count}").mkdir()
            peaks.append(peak_memory(folder, args.memory_input_size, tmp / f"run{count}"))
            print(f"peak memory of the command over {count} images at {args.memory_input_size} px: "
                  f"{peaks[-1] / 2**20:.0f} MiB")
        print(f"memory figure: {peaks[1] / peaks[0]:.3f}x the peak at 10x the images (flat: within 1.05)")


if __name__ == "__main__":
    main()
