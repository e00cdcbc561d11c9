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
from tensorflow.python.eager import record  # the tape's own recording, as tf.custom_gradient uses it


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
    # True: each view has the picture's own size, the pad showing only where a shift, zoom-out or
    # rotation pulls it in. The network then sees 96x96 views of a 96 px picture, not 120x120
    # (lucid's way): 1.56x less work per step.
    same_size: bool = False

    @property
    def active(self) -> bool:
        return bool(self.pad or self.jitter or self.scale or self.rotate or self.jitter_after or self.blur)

    def __call__(self, images: tf.Tensor, seeds: tf.Tensor, step: tf.Tensor, xla: bool = False) -> tf.Tensor:
        """One random view per image; `seeds` (batch,) int32, `step` a scalar int32; `xla`: made of
        ops XLA can compile."""
        size = images.shape[1:3] if self.same_size else None
        warped = bool(self.jitter or self.scale or self.rotate or self.jitter_after)
        # A moving view of the picture's size samples the picture itself with the pad's grey as its
        # fill, not a padded copy: the same view as far as the copy's reflected edge (twice the pad:
        # 24 px, beyond lucid's views' reach) and the same gradient (_filled_warp), at 1.56x less work
        # for the gradient and none for the pad (VGG16 at 96 px, 16 pictures: 7.0 -> 4.0 ms).
        fill = self.pad_value if warped and size is not None and self.pad else None
        if self.pad and fill is None:
            p = self.pad
            images = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=self.pad_value)
        if warped:
            u = _uniform_per_image(seeds, step)
            lo, hi = self.scale or (1.0, 1.0)
            images = warp(images, shift=u[:, 0:2] * self.jitter + u[:, 4:6] * self.jitter_after,
                          scale=lo + (u[:, 2] + 1.0) / 2.0 * (hi - lo), angle=u[:, 3] * math.radians(self.rotate),
                          output_size=size, xla=xla, fill=fill)
        elif size is not None and self.pad:
            images = images[:, self.pad : self.pad + size[0], self.pad : self.pad + size[1]]
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


def warp(images: tf.Tensor, shift: tf.Tensor, scale: tf.Tensor, angle: tf.Tensor,
         output_size: Optional[Sequence[int]] = None, xla: bool = False, fill: Optional[float] = None) -> tf.Tensor:
    """Per-image zoom by `scale` and rotation by `angle` about the centre, then a `shift` in pixels,
    sampled bilinearly into `output_size` (default: the input's size) about the same centre; beyond
    the image's edges, the image reflected (`fill` None) or the value `fill`."""
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    out = tf.shape(images)[1:3] if output_size is None else tf.constant(list(output_size), tf.int32)
    cy, cx = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
    out_cy, out_cx = (tf.cast(out[0], tf.float32) - 1.0) / 2.0, (tf.cast(out[1], tf.float32) - 1.0) / 2.0
    # Output pixel -> input pixel: undo the shift, then rotate by -angle and zoom by 1/scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    ox, oy = out_cx + shift[:, 0], out_cy + shift[:, 1]
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    if xla:
        return _warp_by_gather(images, tf.stack([a0, a1, a2, b0, b1, b2], axis=1), output_size or images.shape[1:3],
                               fill)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    if fill is None:
        return tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=out,
                                                     fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    return _filled_warp(images, transforms, out, fill)


def _filled_warp(images: tf.Tensor, transforms: tf.Tensor, output_shape: tf.Tensor, fill: float) -> tf.Tensor:
    """The warp with `fill` beyond the image's edges, and the gradient TensorFlow registers for a
    reflecting one: the inverse warp of the view's gradient, reflected at the view's edges. That is
    the gradient a view of a padded copy had, to the picture's pixels; with it the pictures are
    those of the padded copy (with the constant fill's own gradient, the HF fraction of the default
    recipe's pictures rose from 0.173 to 0.181 over 128 pictures of VGG16, and the score fell)."""
    images = tf.convert_to_tensor(images)  # a variable (pixels are their own picture) is read: the tape needs a tensor
    warped = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=output_shape,
                                                   fill_value=fill, interpolation="BILINEAR", fill_mode="CONSTANT")

    def gradient(upstream):
        matrices = tf.reshape(tf.concat([transforms, tf.ones_like(transforms[:, :1])], axis=1), [-1, 3, 3])
        inverse = tf.linalg.inv(matrices)
        inverse = tf.reshape(inverse / inverse[:, 2:3, 2:3], [-1, 9])[:, :8]
        return [tf.raw_ops.ImageProjectiveTransformV3(images=upstream, transforms=inverse,
                                                      output_shape=tf.shape(images)[1:3], fill_value=0.0,
                                                      interpolation="BILINEAR", fill_mode="REFLECT")]

    # The gradient recorded on the tape itself, not with tf.custom_gradient: traced, that registers
    # its gradient function in TensorFlow's global registry for good, keeping every job's traced
    # step alive (tests/test_atlas.py counts them). The view is a tensor of its own, made from a
    # stopped copy so that the kernel's own gradient is not added to this one.
    view = tf.identity(tf.stop_gradient(warped))
    record.record_operation("FilledWarp", [view], [images], gradient)
    return view


def _warp_by_gather(images: tf.Tensor, affine: tf.Tensor, output_size: Sequence[int],
                    fill: Optional[float] = None) -> tf.Tensor:
    """ImageProjectiveTransformV3's bilinear, reflecting warp made of gathers, which XLA compiles
    (it has no kernel for that op): the same view, bit for bit. Its gradient is the sampling's exact
    adjoint, where TensorFlow's registered one is the inverse warp, an approximation; so an XLA
    ascent's pictures differ from a plain one's by more than rounding.
    `affine` (n, 6): x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2."""
    n, height, width, channels = images.shape
    ys, xs = np.meshgrid(np.arange(output_size[0], dtype=np.float32), np.arange(output_size[1], dtype=np.float32),
                         indexing="ij")
    a = affine[:, :, None, None]
    x, y = a[:, 0] * xs + a[:, 1] * ys + a[:, 2], a[:, 3] * xs + a[:, 4] * ys + a[:, 5]
    if fill is None:
        x, y = _reflect(x, width), _reflect(y, height)
    x0, y0 = tf.floor(x), tf.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    if fill is None:
        x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    else:
        x1, y1 = x0 + 1, y0 + 1
    flat = tf.reshape(images, [n, height * width, channels])

    def at(yi, xi):
        if fill is None:  # reflected: always inside
            return _gathered(yi * width + xi)
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        index = tf.clip_by_value(yi, 0, height - 1) * width + tf.clip_by_value(xi, 0, width - 1)
        return tf.where(inside[..., None], _gathered(index), fill)

    def _gathered(index):
        return tf.reshape(tf.gather(flat, tf.reshape(index, [n, -1]), batch_dims=1),
                          [n, output_size[0], output_size[1], channels])

    top = (1.0 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1.0 - wx) * at(y1, x0) + wx * at(y1, x1)
    return (1.0 - wy) * top + wy * bottom


def _reflect(coordinate: tf.Tensor, length: int) -> tf.Tensor:
    """A coordinate outside [0, length - 1] mirrored about the edges (d c b a | a b c d | d c b a),
    as ImageProjectiveTransformV3's REFLECT fill maps it."""
    period = 2.0 * length
    below = coordinate + period * tf.floor(-coordinate / period)
    below = tf.where(below < -length, below + period, -below - 1.0)
    above = coordinate - period * tf.floor(coordinate / period)
    above = tf.where(above >= length, period - above - 1.0, above)
    mapped = tf.where(coordinate < 0, below, tf.where(coordinate > length - 1, above, coordinate))
    return tf.clip_by_value(mapped, 0.0, length - 1.0)


def gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel_1d = np.exp(-(x**2) / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()
    channels = images.shape[-1]
    kernel = np.outer(kernel_1d, kernel_1d)[:, :, None, None] * np.ones((1, 1, channels, 1), np.float32)
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, tf.constant(kernel), [1, 1, 1, 1], "VALID")


