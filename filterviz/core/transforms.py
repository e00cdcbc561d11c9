"""Random views of the image at each step (config group `transforms`): pad, jitter, scale,
rotate, blur. Optimising through them makes pictures that survive small shifts instead of
exploiting single pixels.

Every random draw comes from a stateless seed per image and step, derived from (seed,
layer, filter, copy), so an image's result does not depend on the batch it is in.
"""

import math
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf


def image_seeds(seed: int, layer: str, filters: Sequence[int], copies: int = 1,
                stream: str = "") -> List[int]:
    """A stable 31-bit seed per (seed, layer, filter, copy) in a named random `stream` ("": the
    first start; `retry1`, ...: dead-filter retries); Python's hash() is salted per process."""
    suffix = f"/{stream}" if stream else ""
    return [zlib.crc32(f"{seed}/{layer}/{f}/{k}{suffix}".encode()) & 0x7FFFFFFF for f in filters for k in range(copies)]


@dataclass
class Transforms:
    pad: int = 0  # pixels of constant border added first
    pad_value: float = 0.5
    jitter: int = 0  # random shift of up to ± this many pixels
    scale: Optional[List[float]] = None  # random zoom in [min, max]
    rotate: float = 0.0  # random rotation of up to ± this many degrees
    jitter_after: int = 0  # a second, smaller shift after scale and rotation
    blur: float = 0.0  # Gaussian blur sigma of each view, in pixels

    @property
    def active(self) -> bool:
        return bool(self.pad or self.jitter or self.scale or self.rotate or self.jitter_after or self.blur)

    def __call__(self, images: tf.Tensor, seeds: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """One random view per image; `seeds` (batch,) int32, `step` a scalar int32."""
        if self.pad:
            p = self.pad
            images = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=self.pad_value)
        if self.jitter or self.scale or self.rotate or self.jitter_after:
            u = _uniform_per_image(seeds, step)
            lo, hi = self.scale or (1.0, 1.0)
            images = warp(images, shift=u[:, 0:2] * self.jitter + u[:, 4:6] * self.jitter_after,
                          scale=lo + (u[:, 2] + 1.0) / 2.0 * (hi - lo), angle=u[:, 3] * math.radians(self.rotate))
        if self.blur:
            images = gaussian_blur(images, self.blur)
        return images


def _uniform_per_image(seeds: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Six uniform draws in [-1, 1) per image from its own (seed, step). One op per image where the
    batch is known, not tf.map_fn: a traced map_fn's loop functions stay in TensorFlow's runtime
    after the step that used them is gone, a leak per job in a long in-process atlas."""
    draw = lambda s: tf.random.stateless_uniform([6], tf.stack([s, step]), -1.0, 1.0)  # noqa: E731
    if seeds.shape[0] is None:
        return tf.map_fn(draw, seeds, fn_output_signature=tf.float32)
    return tf.stack([draw(seeds[i]) for i in range(seeds.shape[0])])


def warp(images: tf.Tensor, shift: tf.Tensor, scale: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Per-image zoom by `scale` and rotation by `angle` about the centre, then a `shift` in pixels."""
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    cy, cx = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
    # Output pixel -> input pixel: undo the shift, then rotate by -angle and zoom by 1/scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    ox, oy = cx + shift[:, 0], cy + shift[:, 1]
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")


def gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel_1d = np.exp(-(x**2) / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()
    channels = images.shape[-1]
    kernel = np.outer(kernel_1d, kernel_1d)[:, :, None, None] * np.ones((1, 1, channels, 1), np.float32)
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, tf.constant(kernel), [1, 1, 1, 1], "VALID")


