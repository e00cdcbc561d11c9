"""A run's results as files in its output folder: what each file holds and how it is named.

    pictures/filter_0012.png      one per image (filter_0012_1.png: copy 1, with several copies);
                                  not images/, which is MLflow's for logged images
    grid.png, loss_curve.png      every image in one figure; the objective per iteration
    images.npy, filters.npy, config_resolved.yaml
    losses.npy, activations.npy   per image and iteration: the objective, the filter's mean activation
    final_activations.npy         the filter's activation on each final image
    ascent.gif                    one filter's ascent, when asked for
    attributions.npy              like images.npy: |d objective / d image| summed over the ascent,
                                  for a param that keeps it (maco)
    attributions/filter_0012.png  the picture, transparent where the attribution is low (RGBA)
    PARTIAL                       only in a stopped run's folder: the images are where the ascent
                                  had got to (losses.npy and activations.npy are NaN where steps did not run)
"""

from pathlib import Path
from typing import Optional

import numpy as np

from filterviz.core.ascent import AscentResult, ImageId
from filterviz.core.quality import Quality
from filterviz.recording import images


PARTIAL = "PARTIAL"  # marks the folder of a stopped ascent


def label(image_id: ImageId, copies: int) -> str:
    """`12`, or `12.0`, `12.1`, ... when a filter has several images."""
    return str(image_id.filter) if copies == 1 else f"{image_id.filter}.{image_id.copy}"


def series_name(layer: str, image_id: ImageId, copies: int) -> str:
    """`block3_conv1/f0012` (`.../f0012.1`: copy 1): an image's key in MLflow, the layer in it so
    that filter 12 of one layer is never charted beside filter 12 of another."""
    return f"{layer}/f{image_id.filter:04d}" + (f".{image_id.copy}" if copies > 1 else "")


def png_name(image_id: ImageId, copies: int) -> str:
    return f"filter_{image_id.filter:04d}" + (f"_{image_id.copy}" if copies > 1 else "") + ".png"


def write_results(result: AscentResult, figures: Optional[Quality], title: str, out: Path,
                  resolved_config: str) -> None:
    """Everything a run produces, as files: per-filter PNGs, grid, loss curves, raw arrays, config
    (no quality figures for a stopped run, which is marked PARTIAL)."""
    (out / "pictures").mkdir(parents=True, exist_ok=True)
    if not result.complete:
        (out / PARTIAL).write_text(f"{title}: the ascent was stopped; these images are where it had got to\n")
    copies = result.copies
    labels = [label(i, copies) for i in result.ids]
    for image_id, image in zip(result.ids, result.images):
        images.save_png(image, out / "pictures" / png_name(image_id, copies))
    if result.attributions is not None:
        (out / "attributions").mkdir(exist_ok=True)
        np.save(out / "attributions.npy", result.attributions)
        for image_id, image, attribution in zip(result.ids, result.images, result.attributions):
            images.save_attribution_png(image, attribution, out / "attributions" / png_name(image_id, copies))
    images.save_grid(result.images, labels, title, out / "grid.png")
    images.save_loss_curves(result.losses, labels, title, out / "loss_curve.png")
    if result.frames:
        images.save_gif(result.frames, out / "ascent.gif")
    np.save(out / "images.npy", result.images)
    np.save(out / "filters.npy", np.asarray(result.filters))
    np.save(out / "losses.npy", result.losses)
    np.save(out / "activations.npy", result.activations)
    if figures is not None:
        np.save(out / "final_activations.npy", figures.final_activation)
    (out / "config_resolved.yaml").write_text(resolved_config)
