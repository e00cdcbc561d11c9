"""Which recipe leaves the fewest dead filters, and at what cost?

A filter is dead when its ascent found nothing to climb (`AscentResult.dead`, the rule a run
uses). Over a random sample of `--per-layer` filters of every conv layer of VGG16 (the same
filters for every recipe), each recipe runs as a job would: a first start, then `retry_dead=2`'s
retries from livelier starts for the filters still dead. Prints, per recipe, the dead fraction
at the first start and after the retries, and the seconds each took (tracing included, as a
run pays it), then the same per layer.

    python experiments/dead_filters.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hydra import compose, initialize_config_module  # noqa: E402

from filterviz import job  # noqa: E402
from filterviz.config import register_configs  # noqa: E402
from filterviz.core.ascent import Ascent, retry_dead  # noqa: E402

RECIPES = ["seed", "lucid", "best", "maco"]  # presets: experiments/experiment/<name>.yaml
LAYERS = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2",
          "block3_conv3", "block4_conv1", "block4_conv2", "block4_conv3", "block5_conv1", "block5_conv2",
          "block5_conv3"]
RETRIES = 2


def plan(recipe: str, layer: str, args) -> job.Plan:
    preset, *extra = recipe.split()  # "best param.std=0.5": a preset with overrides
    overrides = [f"experiment={preset}", *extra, f"layer={layer}", f"filters=random:{args.per_layer}", "tracking=off",
                 f"model.weights={args.weights}", f"input_size={args.size}"]
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        return job.prepare(compose("config", overrides=overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="imagenet", help="imagenet, or a VGG16 .weights.h5 path")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--per-layer", type=int, default=16, help="filters sampled per layer (seed 0)")
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    register_configs()
    recipes, layers = args.recipes.split(","), args.layers.split(",")

    rows = []  # recipe, layer, filters, iterations, dead at first start, dead after retries, s first, s retries
    for recipe in recipes:
        for layer in layers:
            p = plan(recipe, layer, args)
            job.seed_everything(p.cfg.seed, p.cfg.deterministic)
            start = time.perf_counter()
            result = Ascent(p.cut.extractor, p.recipe, **p.schedule()).run(p.filters)
            first = time.perf_counter() - start
            dead_first = len(result.dead_filters())
            start = time.perf_counter()
            result = retry_dead(p.cut.extractor, result, RETRIES, recipe=p.recipe, **p.schedule())
            again = time.perf_counter() - start
            rows.append((recipe, layer, len(p.filters), p.cfg.iters, dead_first, len(result.dead_filters()),
                         first, again))
            print(f"{recipe:>6} {layer:>13}: dead {dead_first} -> {rows[-1][5]} of {len(p.filters)}, "
                  f"{first:.1f} s + {again:.1f} s", flush=True)

    print(f"\n{args.per_layer} random filters (seed 0) of each of {len(layers)} conv layers of VGG16, "
          f"{args.size} px, {os.cpu_count()} CPUs; retries: {RETRIES}\n")
    print("| recipe | iterations | dead at first start | dead after retries | seconds, first start "
          "| seconds, retries | seconds, total |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for recipe in recipes:
        mine = [r for r in rows if r[0] == recipe]
        n = sum(r[2] for r in mine)
        first, after = sum(r[4] for r in mine), sum(r[5] for r in mine)
        s_first, s_again = sum(r[6] for r in mine), sum(r[7] for r in mine)
        print(f"| {recipe} | {mine[0][3]} | {first}/{n} ({100 * first / n:.1f} %) | {after}/{n} "
              f"({100 * after / n:.1f} %) | {s_first:.0f} | {s_again:.0f} | {s_first + s_again:.0f} |")
    print("\nper layer, dead at first start -> after retries:\n")
    print("| layer | " + " | ".join(recipes) + " |")
    print("| --- | " + " | ".join("---" for _ in recipes) + " |")
    for layer in layers:
        cells = [next(f"{r[4]} -> {r[5]}" for r in rows if r[0] == recipe and r[1] == layer) for recipe in recipes]
        print(f"| {layer} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
