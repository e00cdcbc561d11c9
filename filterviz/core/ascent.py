"""Gradient ascent on an image parameterization: one image per filter (or several, for
diversity), many filters per compiled step.

A step: parameters -> image in [0, 1] (params.py) -> a random view (transforms.py) ->
the model's preprocessing -> the layer's activations -> the objective (objectives.py)
-> the optimizer's update (optimizers.py). With the seeds' recipe (pixels from a flat 0.5,
raw image, no transforms, `channel`, l2-normalised step) this is the notebooks' algorithm,
bit for bit. Plain TensorFlow and NumPy; no Hydra, no MLflow.
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from filterviz.core import objectives
from filterviz.core.optimizers import L2Step
from filterviz.core.params import Pixel
from filterviz.core.transforms import Transforms, image_seeds

# Called after every step with (chunk's filters, iteration, per-image objective as a tensor).
StepCallback = Callable[[Sequence[int], int, tf.Tensor], None]
Preprocess = Callable[[tf.Tensor], tf.Tensor]


@dataclass
class Recipe:
    """How to ascend: everything but the model, the filters and the schedule."""

    param: object = field(default_factory=Pixel)
    transforms: Transforms = field(default_factory=Transforms)
    objective: List[Tuple[float, str]] = field(default_factory=lambda: [(1.0, "channel")])
    optimizer: object = field(default_factory=L2Step)
    preprocess: Optional[Preprocess] = None  # [0, 1] RGB -> the model's input, inside the graph
    copies: int = 1  # images per filter (for diversity)
    border: int = 0  # activation-map pixels the objective leaves out at each edge
    direction: Optional[np.ndarray] = None  # for the `direction` term


@dataclass
class AscentResult:
    filters: List[int]  # each image's filter (repeated `copies` times, consecutively)
    images: np.ndarray  # (n_images, size, size, channels): the final images (raw pixels for `pixel`)
    losses: np.ndarray  # (n_images, iters): the objective at each iteration, before its update
    copies: int = 1
    frames: List[np.ndarray] = field(default_factory=list)  # of one image, for a GIF


def dead_images(result: AscentResult) -> np.ndarray:
    """Images whose filter never fired: zero at every step, so a zero gradient never moved them."""
    return result.losses.max(axis=1) <= 0


def dead_filters(filters: Sequence[int], dead: np.ndarray) -> List[int]:
    return sorted({f for f, d in zip(filters, dead) if d})


def retry_dead(extractor: keras.Model, result: AscentResult, attempts: int, *, recipe: Recipe, seed: int,
               **kwargs) -> AscentResult:
    """Run dead filters again from new, livelier random starts (the same start would only repeat)."""
    retry_recipe = Recipe(**{**recipe.__dict__, "param": recipe.param.livelier()})
    k = result.copies
    for attempt in range(1, attempts + 1):
        dead = dead_filters(result.filters, dead_images(result))
        if not dead:
            break
        again = visualize_filters(extractor, dead, recipe=retry_recipe, seed=seed + 7919 * attempt, **kwargs)
        row = {(f, j % k): j for j, f in enumerate(again.filters)}  # copies of a filter are consecutive
        for i, f in enumerate(result.filters):
            j = row.get((f, i % k))
            if j is not None:
                result.images[i], result.losses[i] = again.images[j], again.losses[j]
    return result


def make_step(extractor: keras.Model, recipe: Recipe):
    """One compiled ascent step for a batch; traced once, whatever the filters or step size."""
    # Grappler's arithmetic optimizer rewrites the mean and the l2-normalisation with a
    # different rounding; without it the compiled step is bit-identical to the notebooks'
    # eager loop, at no measured speed cost.
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    direction = None if recipe.direction is None else tf.constant(recipe.direction, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(params, state, filter_indices, seeds, t, step_size):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            images = recipe.param.to_image(params)
            view = recipe.transforms(images, seeds, t) if recipe.transforms.active else images
            model_input = recipe.preprocess(view) if recipe.preprocess else view
            activations = tf.cast(extractor(model_input, training=False), tf.float32)
            context = objectives.Context(activations, filter_indices, images, recipe.copies, recipe.border, direction)
            objective = objectives.evaluate(recipe.objective, context)
            # Images are independent, so d(sum)/d(image_i) is the gradient of objective_i alone.
            total = tf.reduce_sum(objective)
        grads = tape.gradient(total, params)
        params, state = recipe.optimizer.update(params, grads, state, step_size, t)
        return objective, params, state

    return step


def chunks(filters: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(filters[i : i + batch_size]) for i in range(0, len(filters), batch_size)]


def visualize_filters(
    extractor: keras.Model,
    filters: Sequence[int],
    *,
    iters: int,
    step_size: float,
    input_size: int,
    batch_size: int = 16,
    recipe: Optional[Recipe] = None,
    seed: int = 0,
    layer: str = "",
    on_step: Optional[StepCallback] = None,
    gif_filter: Optional[int] = None,
    gif_frames: int = 40,
) -> AscentResult:
    """Maximise `recipe`'s objective for each filter of `extractor`'s output.

    Random starts and views are seeded per image from (seed, layer, filter, copy), so a
    filter's images do not depend on which filters share its batch.
    """
    recipe = recipe or Recipe()
    channels = int(extractor.input_shape[-1])
    step = make_step(extractor, recipe)
    rate = tf.constant(step_size, tf.float32)
    every = max(1, iters // gif_frames)
    out_filters, images, losses, frames = [], [], [], []
    for chunk in chunks(filters, max(1, batch_size // recipe.copies)):
        per_image = [f for f in chunk for _ in range(recipe.copies)]
        seeds = image_seeds(seed, layer, chunk, recipe.copies)
        params = recipe.param.init(seeds, input_size, channels)
        state = recipe.optimizer.init_state(params)
        indices = tf.constant(per_image, tf.int32)
        seeds_t = tf.constant(seeds, tf.int32)
        traced = per_image.index(gif_filter) if gif_filter in per_image else None
        history = []
        for i in range(iters):
            if traced is not None and i % every == 0:
                frames.append(recipe.param.to_image(params)[traced].numpy())
            loss, params, state = step(params, state, indices, seeds_t, tf.constant(i, tf.int32), rate)
            history.append(loss)  # stays a tensor: no device sync per step
            if on_step is not None:
                on_step(chunk, i, loss)
        final = recipe.param.to_image(params)
        if traced is not None:
            frames.append(final[traced].numpy())
        out_filters += per_image
        images.append(final.numpy())
        losses.append(tf.stack(history, axis=1).numpy())
    return AscentResult(out_filters, np.concatenate(images), np.concatenate(losses), recipe.copies, frames)
