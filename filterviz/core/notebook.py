"""The seed notebooks' loop, as they wrote it: eager, one filter at a time.

Kept as the reference that `ascent` must match bit for bit, and as the baseline of
experiments/benchmark.py. Not used by the app.
"""

import keras
import numpy as np
import tensorflow as tf


def notebook_visualize_filter(extractor: keras.Model, filter_index: int, iters: int = 30,
                              step_size: float = 10.0, input_size: int = 96):
    """Returns (final raw image (H, W, 3), losses per iteration)."""

    def compute_loss(input_image, filter_index):
        activation = extractor(input_image)
        filter_activation = activation[:, :, :, filter_index]
        return tf.reduce_mean(filter_activation)

    def gradient_ascent_step(img, filter_index, learning_rate):
        with tf.GradientTape() as tape:
            tape.watch(img)
            loss = compute_loss(img, filter_index)
        grads = tape.gradient(loss, img)
        grads = tf.math.l2_normalize(grads)
        img += learning_rate * grads
        return loss, img

    img = tf.ones((1, input_size, input_size, 3)) * 0.5
    losses = []
    for _ in range(iters):
        loss, img = gradient_ascent_step(img, filter_index, step_size)
        losses.append(float(loss))
    return img.numpy()[0], np.array(losses)
