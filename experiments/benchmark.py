"""Speed of filterviz's recipes against xplique, the seeds' loop and the hardware's ceiling.

On one machine, in one run, interleaved rounds of (pick with --contenders):
  seed         the seed recipe (experiment=seed: pixels, no transforms, l2 step), all filters in one step
  best         the default recipe (experiment=best: Fourier, transforms, Adam) as a run makes it here: views
               of the picture's own size; XLA and bfloat16 where this machine runs them faster (their defaults)
  best-xla     the same in float32, XLA-compiled                      }
  best-plain   the same in float32, not compiled by XLA               } what each change bought
  best-padded  the same, plain, with lucid's padded 120 px views      } (the default before them)
  best-bf16    the same, plain, in bfloat16 (Keras mixed precision)   }
  xplique      xplique's `optimize` (Fourier, its standard transforms, Adam 0.05) on the same filters,
               size and iterations; needs the `benchmark` extra (pip install -e .[benchmark])
  xplique-bf16 the same under Keras' mixed_bfloat16 policy (xplique's precision equal to best-bf16's)
  bare         a compiled forward + input-gradient pass of the same batch, nothing else
  notebook     the seed notebooks' eager loop, one filter at a time (filterviz/core/notebook.py)
  bf16         the seed recipe with precision=bfloat16 (Keras mixed precision), for reference
  live         the seed recipe streaming every point to a SQLite MLflow store as a run does
for `--filters` filters of `--layer` at `--size`. Prints filter-iterations per second (median over
rounds) and the ratios against their targets: best >= 1.3x xplique, seed >= 0.9x bare.

xplique's `optimize` traces a new step at every call, so its rate is taken from two calls of
different lengths (the difference cancels the tracing), like filterviz's after a warm-up round.

    python experiments/benchmark.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from filterviz import job  # noqa: E402
from filterviz.config import register_configs  # noqa: E402
from filterviz.core.ascent import Ascent, ImageId, visualize_filters  # noqa: E402
from filterviz.core.models import cut_at, load_model  # noqa: E402
from filterviz.core.notebook import notebook_visualize_filter  # noqa: E402
from filterviz.recording import tracking  # noqa: E402
from filterviz.recording.live import LiveRun  # noqa: E402

DEFAULT = "seed,best,best-xla,best-plain,best-padded,best-bf16,xplique,bare"


def plan_of(args, *overrides: str) -> job.Plan:
    """The run's own plan (model cut, filters, recipe) for these settings, as the CLI builds it."""
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        cfg = compose("config", overrides=[f"layer={args.layer}", f"filters=0:{args.filters}",
                                           f"input_size={args.size}", f"iters={args.iters}", "tracking=off",
                                           f"model.weights={args.weights}", *overrides])
    return job.prepare(cfg)


def xplique_contender(args, extractor: tf.keras.Model, precision: str = "float32"):
    """xplique's optimize on the same filters: returns a function timing `n` of its iterations."""
    import keras
    from xplique.features_visualizations import Objective, optimize

    tf.random.set_seed(0)  # its random ops are stateful; op determinism wants a seed
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == "float32" else f"mixed_{precision}")
    try:
        sized = keras.applications.VGG16(include_top=False, weights=None, input_shape=(args.size, args.size, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in extractor.layers:
        if layer.weights:
            sized.get_layer(layer.name).set_weights(layer.get_weights())
    layer = args.layer
    if precision != "float32":  # xplique's objective multiplies float32 weights: hand it float32 activations
        out = keras.layers.Activation("linear", dtype="float32", name="as_float32")(sized.get_layer(layer).output)
        sized, layer = keras.Model(sized.input, out), "as_float32"
    objective = Objective.channel(sized, layer, list(range(args.filters)))

    def seconds(n: int) -> float:
        start = time.perf_counter()
        images, _ = optimize(objective, nb_steps=n, custom_shape=(args.size, args.size))
        images[-1].numpy()
        return time.perf_counter() - start

    return lambda: seconds(2 + args.iters) - seconds(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="imagenet", help="imagenet, or a VGG16 .weights.h5 path")
    parser.add_argument("--layer", default="block5_conv1")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iters", type=int, default=8, help="iterations per filter in each timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contenders", default=DEFAULT, help=f"comma-separated, default {DEFAULT}")
    args = parser.parse_args()
    chosen = args.contenders.split(",")
    register_configs()

    best = plan_of(args)
    job.seed_everything(0, best.cfg.deterministic)  # as a run does
    f32 = "precision=float32"
    variants = {"best-xla": ["xla=true", f32], "best-plain": ["xla=false", f32],
                "best-padded": ["xla=false", f32, "transforms.same_size=false"],
                "best-bf16": ["xla=false", "precision=bfloat16"]}
    plans = {"best": best, **{name: plan_of(args, *overrides) for name, overrides in variants.items()
                              if name in chosen or name == "best-plain"}}  # only what is timed (and best-plain)
    extractor = plans["best-plain"].cut.extractor  # float32, for the seed recipe, bare and xplique
    filters = list(range(args.filters))
    work = len(filters) * args.iters  # filter-iterations per round

    def timed(run):
        def seconds() -> float:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
        return seconds

    def recipe(name: str):
        plan = plans[name]
        ascent = Ascent(plan.cut.extractor, plan.recipe, **plan.schedule())
        return timed(lambda: ascent.run(filters))

    def seed(model=extractor, on_step=None):
        visualize_filters(model, filters, iters=args.iters, step_size=10.0, input_size=args.size,
                          batch_size=len(filters), on_step=on_step)

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

    def notebook():
        for f in filters:
            notebook_visualize_filter(extractor, f, iters=args.iters, input_size=args.size)

    contenders = {"seed": timed(seed), "bare": timed(bare), "notebook": timed(notebook)}
    contenders.update({name: recipe(name) for name in plans if name in chosen})
    if "bf16" in chosen:
        bf16 = cut_at(load_model("vgg16", args.weights, precision="bfloat16"), args.layer).extractor
        contenders["bf16"] = timed(lambda: seed(bf16))
    if "live" in chosen:
        store = tempfile.mkdtemp()
        tracker = tracking.Tracker(tracking.resolve_store(f"sqlite:///{store}/mlflow.db"), "benchmark")
        # Runs are made before the clock starts (a real run makes its own before the first step too).
        run_ids = [tracker.client.create_run(tracker.experiment_id).info.run_id for _ in range(args.rounds + 1)]

        def live():
            recorder = LiveRun(tracker, run_ids.pop(), {ImageId(f, 0): f"{args.layer}/f{f:04d}" for f in filters},
                               args.iters)
            seed(on_step=recorder)
            recorder.close()  # every point in the store before the clock stops
        contenders["live"] = timed(live)
    for name, precision in (("xplique", "float32"), ("xplique-bf16", "bfloat16")):
        if name in chosen:
            try:
                contenders[name] = xplique_contender(args, extractor, precision)
            except ImportError:
                print("xplique is not installed (pip install -e .[benchmark]): left out")
    contenders = {name: seconds for name, seconds in contenders.items() if name in chosen}

    for seconds in contenders.values():  # warm up: tracing, compilation, first-call allocation untimed
        seconds()
    rates = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, seconds in contenders.items():
            rates[name].append(work / seconds())

    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{args.filters} filters of vgg16 {args.layer} at {args.size}x{args.size}, {args.iters} iterations, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs; the default here: xla={best.cfg.xla}, "
          f"precision={best.cfg.precision.value}")
    for name, rate in median.items():
        spread = f"{min(rates[name]):.1f}..{max(rates[name]):.1f}"
        print(f"  {name:<12} {rate:7.2f} filter-iterations/s  (rounds {spread})")

    def ratio(a: str, b: str, target: str) -> None:
        if a in median and b in median:
            print(f"  {a} / {b} = {median[a] / median[b]:.2f}x  ({target})")

    ratio("best", "xplique", "target >= 1.3")
    ratio("seed", "bare", "target >= 0.9")
    ratio("best-plain", "best-padded", "views of the picture's size instead of padded ones")
    ratio("best-xla", "best-plain", f"XLA; > 1 where the default compiles (here xla={best.cfg.xla})")
    ratio("seed", "notebook", "target >= 3")
    ratio("bf16", "seed", "> 1 only where the hardware has bfloat16 units")
    ratio("best-bf16", "best-plain", "bfloat16; > 1 only where the hardware has bfloat16 units")
    ratio("best-bf16", "xplique-bf16", "both in bfloat16")
    ratio("best-plain", "xplique", "both in float32")
    if "live" in median and "seed" in median:
        print(f"  live logging overhead = {100 * (1 - median['live'] / median['seed']):.1f} %  (target < 5 %)")


if __name__ == "__main__":
    main()
