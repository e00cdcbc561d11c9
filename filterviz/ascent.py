"""Gradient ascent on the pixels: one image per filter, many filters per compiled step.

This is the notebooks' algorithm, batched: start from a flat image (0.5), loss = mean
activation of the filter, gradient l2-normalised over each image, ``image += step_size *
gradient``. Plain TensorFlow and NumPy; no Hydra, no MLflow.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

# Called after every step with (chunk's filters, iteration, per-filter losses as a tensor).
StepCallback = Callable[[Sequence[int], int, tf.Tensor], None]


@dataclass
class AscentResult:
    filters: List[int]
    images: np.ndarray  # (n_filters, size, size, channels), raw pixel values after the last step
    losses: np.ndarray  # (n_filters, iters): the loss at each iteration, before that step's update
    final_activations: np.ndarray  # (n_filters,): the loss of the final images


def filter_means(extractor: keras.Model, images: tf.Tensor, filter_indices: tf.Tensor) -> tf.Tensor:
    """Mean activation of each image's own filter: the loss the ascent maximises."""
    # float32 whatever the model computes in (mixed precision)
    activations = tf.cast(extractor(images, training=False), tf.float32)
    return tf.reduce_mean(tf.gather(activations, filter_indices, axis=3, batch_dims=1), axis=[1, 2])


def make_step(extractor: keras.Model) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple]:
    """One compiled ascent step for a batch; traced once, whatever the filters or step size."""
    # Grappler's arithmetic optimizer rewrites the mean and the l2-normalisation with a
    # different rounding; without it the compiled step is bit-identical to the notebooks'
    # eager loop, at no measured speed cost.
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})

    @tf.function(reduce_retracing=True)
    def step(images, filter_indices, step_size):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            losses = filter_means(extractor, images, filter_indices)
            # Images are independent, so d(sum)/d(image_i) is the gradient of loss_i alone.
            total = tf.reduce_sum(losses)
        grads = tf.math.l2_normalize(tape.gradient(total, images), axis=[1, 2, 3])
        return losses, images + step_size * grads

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
    initial_value: float = 0.5,
    on_step: Optional[StepCallback] = None,
) -> AscentResult:
    """Maximise the mean activation of each filter of `extractor`'s output, one image each."""
    channels = int(extractor.input_shape[-1])
    step = make_step(extractor)
    measure = tf.function(lambda batch, indices: filter_means(extractor, batch, indices), reduce_retracing=True)
    rate = tf.constant(step_size, tf.float32)
    images, losses, finals = [], [], []
    for chunk in chunks(filters, batch_size):
        batch = tf.fill((len(chunk), input_size, input_size, channels), tf.constant(initial_value, tf.float32))
        indices = tf.constant(chunk, tf.int32)
        history = []
        for i in range(iters):
            loss, batch = step(batch, indices, rate)
            history.append(loss)  # stays a tensor: no device sync per step
            if on_step is not None:
                on_step(chunk, i, loss)
        images.append(batch.numpy())
        losses.append(tf.stack(history, axis=1).numpy())
        finals.append(measure(batch, indices).numpy())
    return AscentResult(list(filters), np.concatenate(images), np.concatenate(losses), np.concatenate(finals))
