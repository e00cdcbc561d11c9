"""What the ascent maximises (config group `objective`): a weighted sum of terms.

Activation terms (of the layer's output): channel (the seeds'), neuron (the centre unit),
layer (DeepDream: mean square of the whole layer), direction (a vector in channel space),
diversity (images of the same filter pushed apart). Image terms (regularizers, usually
with a negative weight): l1, l2, tv (total variation), blur.

    expr: "channel - 0.1 * l2 + 0.5 * diversity"

Each weight multiplies its own term only. Every term is per image, so an image's objective
never depends on other filters in its batch (diversity compares copies of one filter only).

`activation` (the filter's mean response, the `channel` term) is also what decides whether
a filter is dead: see `AscentResult.dead` in ascent.py.
"""

import re
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from filterviz.errors import ConfigError
from filterviz.core.transforms import gaussian_blur


@dataclass
class Context:
    output: Optional[tf.Tensor]  # (batch, h, w, channels): the layer's output, in its compute dtype
    filters: tf.Tensor  # (batch,) int32: each image's filter
    images: Optional[tf.Tensor]  # (batch, size, size, c): the image in [0, 1] before transforms
    copies: int = 1  # images per filter, consecutive in the batch
    border: int = 0  # activation-map pixels left out at each edge
    direction: Optional[tf.Tensor] = None  # (channels,) for `direction`
    own: Optional[tf.Tensor] = None  # (batch, h, w): each image's own filter's map, where only that was computed

    @cached_property
    def activations(self) -> tf.Tensor:
        """The layer's whole output in float32."""
        if self.output is None:
            raise ValueError("this objective reads the whole layer, which was not computed (see OWN_FILTER_TERMS)")
        return tf.cast(self.output, tf.float32)

    def own_maps(self) -> tf.Tensor:
        """(batch, h, w) float32: each image's own filter's map. Picked in the layer's dtype and cast
        after, not cast whole: at block1 of VGG16 casting the whole map to float32 (and its gradient
        back) cost a tenth of a step; the values are the same."""
        own = self.own if self.own is not None else tf.gather(self.output, self.filters, axis=3, batch_dims=1)
        return tf.cast(own, tf.float32)


def _cropped(ctx: Context, maps: tf.Tensor) -> tf.Tensor:
    """`maps` (batch, h, w, ...) without the border."""
    b = ctx.border
    return maps[:, b:-b, b:-b] if b else maps


def channel(ctx: Context) -> tf.Tensor:
    return tf.reduce_mean(_cropped(ctx, ctx.own_maps()), axis=[1, 2])


def channel_means(ctx: Context) -> tf.Tensor:
    """(batch, channels): every channel's mean response, as `channel` reads its own (not a term)."""
    return tf.reduce_mean(_cropped(ctx, ctx.activations), axis=[1, 2])


def neuron(ctx: Context) -> tf.Tensor:
    maps = ctx.own_maps()
    return maps[:, tf.shape(maps)[1] // 2, tf.shape(maps)[2] // 2]


def layer(ctx: Context) -> tf.Tensor:
    return tf.reduce_mean(tf.square(_cropped(ctx, ctx.activations)), axis=[1, 2, 3])


def direction(ctx: Context) -> tf.Tensor:
    unit = tf.math.l2_normalize(ctx.direction)
    return tf.reduce_mean(tf.tensordot(_cropped(ctx, ctx.activations), unit, axes=[[3], [0]]), axis=[1, 2])


def diversity(ctx: Context) -> tf.Tensor:
    """Minus the mean cosine similarity of an image's Gram matrix to those of its filter's other copies."""
    k = ctx.copies
    if k < 2:
        return tf.zeros(tf.shape(ctx.filters), tf.float32)
    acts = ctx.activations
    flat = tf.reshape(acts, [tf.shape(acts)[0], -1, tf.shape(acts)[3]])
    gram = tf.math.l2_normalize(tf.reshape(tf.matmul(flat, flat, transpose_a=True), [tf.shape(acts)[0], -1]), axis=1)
    groups = tf.reshape(gram, [-1, k, tf.shape(gram)[1]])
    similarity = tf.matmul(groups, groups, transpose_b=True)  # (groups, k, k)
    others = (tf.reduce_sum(similarity, axis=2) - 1.0) / (k - 1)  # drop the self-similarity of 1
    return -tf.reshape(others, [-1])


def l1(ctx: Context) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(ctx.images - 0.5), axis=[1, 2, 3])


def l2(ctx: Context) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(ctx.images - 0.5), axis=[1, 2, 3]))


def tv(ctx: Context) -> tf.Tensor:
    x = ctx.images
    return (tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]), axis=[1, 2, 3])
            + tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]), axis=[1, 2, 3]))


def blur(ctx: Context) -> tf.Tensor:
    """How far the image is from a blurred copy of itself: penalises high frequencies."""
    return tf.reduce_mean(tf.square(ctx.images - tf.stop_gradient(gaussian_blur(ctx.images, 1.0))), axis=[1, 2, 3])


TERMS: Dict[str, Callable[[Context], tf.Tensor]] = {
    f.__name__: f for f in (channel, neuron, layer, direction, diversity, l1, l2, tv, blur)}
_TERM = re.compile(r"\s*([+-])?\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*\*\s*)?([a-z_0-9]+)\s*")


def parse(expr: str) -> List[Tuple[float, str]]:
    """'channel - 0.1 * l2' -> [(1.0, 'channel'), (-0.1, 'l2')]"""
    terms, pos = [], 0
    while pos < len(expr):
        m = _TERM.match(expr, pos)
        if not m or (terms and not m.group(1)):
            raise ConfigError(f"objective {expr!r} is not a weighted sum: write e.g. \"channel - 0.1 * l2\"")
        sign, weight, name = m.groups()
        if name not in TERMS:
            raise ConfigError(f"unknown objective term {name!r}: use {', '.join(TERMS)}")
        terms.append(((-1.0 if sign == "-" else 1.0) * float(weight or 1.0), name))
        pos = m.end()
    if not terms:
        raise ConfigError("objective is empty: write e.g. objective.expr=channel")
    return terms


@dataclass
class Objective:
    """What the ascent maximises for each image: a weighted sum of terms."""

    expr: str = "channel"
    copies: int = 1  # images per filter; diversity needs 2 or more
    border: int = 0  # activation-map pixels left out at each edge
    direction: Optional[List[float]] = None  # for `direction`; None: a seeded random vector

    def __post_init__(self):
        self.terms = parse(self.expr)
        if self.copies < 1:
            raise ConfigError(f"objective.copies={self.copies}: at least 1 image per filter")
        if self.uses("diversity") and self.copies < 2:
            raise ConfigError("the diversity term needs several images per filter: set objective.copies=4, say")
        if self.border < 0:
            raise ConfigError(f"objective.border={self.border}: a border cannot be negative")

    def uses(self, term: str) -> bool:
        return any(name == term for _, name in self.terms)

    def for_layer(self, layer: str, channels: int, map_side: int, seed: int) -> "Objective":
        """This objective on one layer: the border checked against its activation map, the direction
        checked against its channels (or drawn from `seed`)."""
        if 2 * self.border >= map_side:
            raise ConfigError(f"objective.border={self.border} leaves nothing of {layer}'s {map_side}x{map_side} "
                              f"activation map: use at most {(map_side - 1) // 2}, or a larger input_size")
        if not self.uses("direction"):
            return self
        vector = self.direction if self.direction is not None else random_direction(channels, seed).tolist()
        if len(vector) != channels:
            raise ConfigError(f"objective.direction has {len(vector)} values; {layer} has {channels} channels")
        return replace(self, direction=[float(v) for v in vector])

    @property
    def own_filter_only(self) -> bool:
        """Whether every term reads the image's own filter alone (or the image), not the whole layer."""
        return all(name in OWN_FILTER_TERMS for _, name in self.terms)

    def context(self, output: Optional[tf.Tensor], filters: tf.Tensor, images: Optional[tf.Tensor] = None,
                own: Optional[tf.Tensor] = None) -> Context:
        """`output`: the layer's whole output, or None where `own` holds each image's own filter's map."""
        direction = None if self.direction is None else tf.constant(self.direction, tf.float32)
        return Context(output, filters, images, self.copies, self.border, direction, own)

    def __call__(self, ctx: Context) -> tf.Tensor:
        """The per-image objective: the weighted sum of the terms."""
        total = None
        for weight, name in self.terms:
            value = TERMS[name](ctx)
            value = value if weight == 1.0 else weight * value
            total = value if total is None else total + value
        return total


activation = channel  # the filter's mean response, whatever the objective
FILTER_TERMS = ("channel", "neuron")  # the terms that make an image a picture of its own filter
# the terms that read no filter of the layer but the image's own: with only these, the ascent computes
# the layer's last convolution for each image's own filter alone (own_filter.py)
OWN_FILTER_TERMS = (*FILTER_TERMS, "l1", "l2", "tv", "blur")


def random_direction(channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(channels).astype(np.float32)
