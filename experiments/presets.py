"""Which preset makes the best pictures for the same wall time on this machine?

For each preset (experiments/experiment/*.yaml) and each layer, a short calibration run
measures seconds per iteration; the real run then gets as many iterations as fit in the
same time budget. Same 8 filters, same seed. Prints a table of the quality figures
(filterviz/core/quality.py) and time, and saves one figure: a row of the 8 filters' images per
preset and layer.

Two verdicts, because the first is graded by what was optimised: the score (robustness x
(1 - HF fraction), per picture) and specificity (is the picture one of *its* filter rather
than of the layer at large). The default must win or tie on both. Every preset draws the same
filters, so each measure is compared picture by picture: the default ties a rival when the 95 %
bootstrap interval of the mean paired difference holds 0, and loses when it lies below.

    python experiments/presets.py --weights ../shared/weights/vgg16_imagenet_notop.weights.h5 \\
        --budget 40 --out docs/presets.png

A change to the code that makes the pictures is checked the same way, against the pictures of the
code before it: `--save before.json` on the old code, then `--against before.json` on the new
(same presets, layers, filters and iterations).
"""

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from filterviz import job  # noqa: E402
from filterviz.config import register_configs  # noqa: E402
from filterviz.core.ascent import nothing_to_climb  # noqa: E402
from filterviz.recording.images import to_display  # noqa: E402

PRESETS = ["seed", "keras_example", "lucid", "best", "maco"]
LAYERS = ["block1_conv2", "block3_conv1", "block5_conv1"]
DEFAULT = "best"


def per_picture(figures: Dict[str, float], dead: np.ndarray) -> Dict[str, Dict[str, float]]:
    """A job's per-image figures by measure, live filters only: {"specificity": {"block3_conv1/f0003": 0.61, ...},
    "score": ...}. `dead`: per image, in the job's order (ascent.nothing_to_climb of its activations.npy)."""
    found: Dict[str, Dict[str, float]] = {}
    for key, value in figures.items():
        figure, _, picture = key.partition("/")
        if picture.count("/") == 1:  # "<figure>/<layer>/<image>"; run-level ones are "quality/<figure>"
            found.setdefault(figure, {})[picture] = value
    # As a run's own figures: over the pictures whose filter fired (a dead one is counted apart)
    live = {k for k, d in zip(found["final_activation"], dead) if not d}
    found = {figure: {k: v for k, v in values.items() if k in live} for figure, values in found.items()}
    found["score"] = {k: r * (1 - found["hf_fraction"][k]) for k, r in found["robustness"].items()}
    return found


def paired_verdict(mine: Dict[str, float], theirs: Dict[str, float], draws: int = 5000) -> Tuple[str, float, float]:
    """"wins", "ties" or "loses": the 95 % bootstrap interval of the mean of mine - theirs over the
    pictures both have (both filters live), above, around or below 0."""
    diff = np.array([mine[k] - theirs[k] for k in sorted(mine.keys() & theirs.keys())])
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return "ties", float("nan"), float("nan")
    means = np.random.default_rng(0).choice(diff, (draws, diff.size)).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return ("wins" if low > 0 else "loses" if high < 0 else "ties"), float(low), float(high)


def run(preset: str, layer: str, iters: int, args, out: Path) -> job.JobResult:
    preset, *extra = preset.split()  # "best param.std=0.5": a preset with overrides
    overrides = [f"experiment={preset}", *extra, f"layer={layer}", f"filters={args.filters}", f"iters={iters}",
                 "tracking=off", f"model.weights={args.weights}", f"input_size={args.size}"]
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        cfg = compose("config", overrides=overrides)
    return job.run(cfg, out)


def calibrated(preset: str, layer: str, args, tmp: Path) -> Tuple[job.JobResult, int]:
    """The run with as many iterations as fit in the budget, and that number."""
    # A job's seconds (no model loading) include tracing and judging, which the difference
    # cancels; on a fast preset 20 iterations are lost in their noise (the seeds' got
    # 40,000 iterations for a 5 s budget), so lengthen the long run until it stands out.
    short = run(preset, layer, 5, args, tmp / "calibrate").figures["seconds"]
    n = 25
    while True:
        long = run(preset, layer, n, args, tmp / "calibrate").figures["seconds"]
        if long - short > max(1.0, 0.2 * short) or n >= 1600:
            break
        n *= 4
    per_iter = max((long - short) / (n - 5), 1e-4)
    iters = max(10, int((args.budget - short) / per_iter))
    return run(preset, layer, iters, args, tmp / f"{preset}-{layer}"), iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--filters", default="0:8")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds per preset and layer")
    parser.add_argument("--iters", type=int, help="instead of a time budget: each preset's own iterations "
                        "(e.g. 64, the default's): the same pictures a run makes, for recipes that differ in speed only")
    parser.add_argument("--out", type=Path, default=Path("presets.png"))
    parser.add_argument("--save", type=Path, help="write each preset's per-picture figures here (JSON)")
    parser.add_argument("--against", type=Path, help="compare each preset's pictures with those --save wrote")
    args = parser.parse_args()
    register_configs()
    presets, layers = args.presets.split(","), args.layers.split(",")

    rows, table, pictures = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            for layer in layers:
                if args.iters:
                    result = run(preset, layer, args.iters, args, Path(tmp) / f"{preset}-{layer}")
                    iters = args.iters
                else:
                    result, iters = calibrated(preset, layer, args, Path(tmp))
                images = np.load(result.results_dir / "images.npy")
                rows.append((preset, layer, images))
                q = result.figures
                dead = nothing_to_climb(np.load(result.results_dir / "activations.npy"))
                for figure, values in per_picture(q, dead).items():
                    pictures.setdefault(preset, {}).setdefault(figure, {}).update(values)
                table.append((preset, layer, iters, q["seconds"], q["quality/final_activation"],
                              q["quality/robustness"], q["quality/hf_fraction"], q["quality/specificity"],
                              int(q["quality/dead_filters"])))
                print(f"{preset:>14} {layer:>13}: {iters} iters in {q['seconds']:.1f} s", flush=True)

    print("\n| preset | layer | iterations | seconds | final activation | robustness | HF fraction | specificity | dead |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset, layer, iters, secs, act, rob, hf, spec, dead in table:
        print(f"| {preset} | {layer} | {iters} | {secs:.1f} | {act:.1f} | {rob:.2f} | {hf:.3f} | {spec:.3f} | {dead} |")
    # Activations are not comparable between raw and preprocessed inputs, so the score is
    # robustness x (1 - HF fraction): survives small shifts, and is not pixel noise.
    print("\nMeans over pictures; score = robustness x (1 - HF fraction) per picture; higher is better for score "
          "and specificity:\n")
    print("| preset | robustness | HF fraction | dead filters | score | specificity |")
    print("| --- | --- | --- | --- | --- | --- |")
    for preset in presets:
        mine = pictures[preset]
        dead = sum(t[8] for t in table if t[0] == preset)
        print(f"| {preset} | {np.nanmean(list(mine['robustness'].values())):.2f} | "
              f"{np.mean(list(mine['hf_fraction'].values())):.3f} | {dead} | "
              f"{np.nanmean(list(mine['score'].values())):.3f} | {np.nanmean(list(mine['specificity'].values())):.3f} |")
    if DEFAULT in pictures and len(presets) > 1:
        print(f"\n{DEFAULT} against each preset, picture by picture (mean difference, 95 % bootstrap interval):\n")
        print("| preset | score | specificity |")
        print("| --- | --- | --- |")
        lost = set()
        for preset in (p for p in presets if p != DEFAULT):
            cells = []
            for figure in ("score", "specificity"):
                verdict, low, high = paired_verdict(pictures[DEFAULT][figure], pictures[preset][figure])
                cells.append(f"{verdict} [{low:+.3f}, {high:+.3f}]")
                if verdict == "loses":
                    lost.add(figure)
            print(f"| {preset} | {' | '.join(cells)} |")
        print(f"\n{DEFAULT}: " + ("wins or ties on both" if not lost else f"loses on {' and '.join(sorted(lost))}"))
    if args.save:
        args.save.write_text(json.dumps(pictures, indent=1))
    if args.against:
        before = json.loads(args.against.read_text())
        print(f"\nagainst {args.against}, picture by picture (mean difference, 95 % bootstrap interval):\n")
        print("| preset | pictures | score now / before | verdict | specificity now / before | verdict |")
        print("| --- | --- | --- | --- | --- | --- |")
        for preset in (p for p in presets if p in before):
            cells = []
            for figure in ("score", "specificity"):
                now, then = pictures[preset][figure], before[preset][figure]
                verdict, low, high = paired_verdict(now, then)
                cells += [f"{np.nanmean(list(now.values())):.3f} / {np.nanmean(list(then.values())):.3f}",
                          f"{verdict} [{low:+.3f}, {high:+.3f}]"]
            shared = len(pictures[preset]["score"].keys() & before[preset]["score"].keys())
            print(f"| {preset} | {shared} | {' | '.join(cells)} |")

    cols = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.1, len(rows) * 1.15))
    for (preset, layer, images), line in zip(rows, np.atleast_2d(axes)):
        for ax, image in zip(line, list(images) + [None] * (cols - len(images))):
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(to_display(image))
        line[0].set_ylabel(f"{preset}\n{layer}", rotation=0, ha="right", va="center", fontsize=8)
    spent = f"{args.iters} iterations" if args.iters else f"{args.budget:.0f} s per preset and layer"
    fig.suptitle(f"filters {args.filters}, {spent}, {args.size} px")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
