"""Speed of filterviz against the seeds' loop and against the hardware's ceiling.

On one machine, in one run, interleaved rounds of:
  notebook  the seed notebooks' eager loop, one filter at a time (filterviz/notebook.py)
  filterviz visualize_filters: the whole batch of filters in one compiled step
  bare      a compiled forward + input-gradient pass of the same batch, nothing else (the ceiling)
  filterviz-bf16  filterviz with precision=bfloat16 (Keras mixed precision), for reference
  filterviz-live  filterviz streaming every activation point to a SQLite MLflow store as a run does
                  (recording/live.py; a send every tenth of the iterations), for the logging overhead
for `--filters` filters of `--layer` at `--size`. Prints filter-iterations per second (median
over rounds) and the ratios; targets: filterviz >= 3x notebook and >= 0.9x bare.

    python experiments/benchmark.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from filterviz.core.ascent import ImageId, visualize_filters  # noqa: E402
from filterviz.core.models import cut_at, load_model  # noqa: E402
from filterviz.core.notebook import notebook_visualize_filter  # noqa: E402
from filterviz.recording import tracking  # noqa: E402
from filterviz.recording.live import LiveRun  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="imagenet", help="imagenet, or a VGG16 .weights.h5 path")
    parser.add_argument("--layer", default="block5_conv1")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iters", type=int, default=8, help="iterations per filter in each timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default="notebook,filterviz,bare,filterviz-bf16,filterviz-live",
                        help="which to time, e.g. filterviz,filterviz-live for the logging overhead alone")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="TensorFlow op determinism, as the app enables by default")
    args = parser.parse_args()
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()

    extractor = cut_at(load_model("vgg16", args.weights), args.layer).extractor
    chosen = args.contenders.split(",")
    extractor_bf16 = cut_at(load_model("vgg16", args.weights, precision="bfloat16"), args.layer).extractor \
        if "filterviz-bf16" in chosen else None
    filters = list(range(args.filters))
    work = len(filters) * args.iters  # filter-iterations per round

    def notebook():
        for f in filters:
            notebook_visualize_filter(extractor, f, iters=args.iters, input_size=args.size)

    def filterviz(model=extractor, on_step=None):
        visualize_filters(model, filters, iters=args.iters, step_size=10.0, input_size=args.size,
                          batch_size=len(filters), on_step=on_step)

    store = tempfile.mkdtemp()
    tracker = tracking.Tracker(tracking.resolve_store(f"sqlite:///{store}/mlflow.db"), "benchmark")

    # Runs are made before the clock starts (a real run makes its own before the first step too).
    run_ids = [tracker.client.create_run(tracker.experiment_id).info.run_id for _ in range(args.rounds + 1)]

    def filterviz_live():
        live = LiveRun(tracker, run_ids.pop(), {ImageId(f, 0): f"{args.layer}/f{f:04d}" for f in filters}, args.iters)
        filterviz(on_step=live)
        live.close()  # every point in the store before the clock stops

    @tf.function
    def forward_and_input_gradient(images):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            loss = tf.reduce_mean(extractor(images, training=False))
        return tape.gradient(loss, images)

    images = tf.fill((len(filters), args.size, args.size, 3), 0.5)

    def bare():
        for _ in range(args.iters):
            grads = forward_and_input_gradient(images)
        grads.numpy()

    contenders = {"notebook": notebook, "filterviz": filterviz, "bare": bare,
                  "filterviz-bf16": lambda: filterviz(extractor_bf16), "filterviz-live": filterviz_live}
    contenders = {name: run for name, run in contenders.items() if name in chosen}
    for run in contenders.values():  # warm up: tracing and first-call allocation are not timed
        run()
    rates = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            rates[name].append(work / (time.perf_counter() - start))

    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{args.filters} filters of vgg16 {args.layer} at {args.size}x{args.size}, {args.iters} iterations, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, deterministic={args.deterministic}")
    for name, rate in median.items():
        spread = f"{min(rates[name]):.1f}..{max(rates[name]):.1f}"
        print(f"  {name:<15} {rate:7.2f} filter-iterations/s  (rounds {spread})")
    def ratio(a: str, b: str, target: str) -> None:
        if a in median and b in median:
            print(f"  {a} / {b} = {median[a] / median[b]:.2f}x  ({target})")

    ratio("filterviz", "notebook", "target >= 3")
    ratio("filterviz", "bare", "target >= 0.9")
    ratio("filterviz-bf16", "filterviz", "> 1 only where the hardware has bfloat16 units")
    if "filterviz-live" in median and "filterviz" in median:
        print(f"  live logging overhead = {100 * (1 - median['filterviz-live'] / median['filterviz']):.1f} %  "
              "(target < 5 %)")


if __name__ == "__main__":
    main()
