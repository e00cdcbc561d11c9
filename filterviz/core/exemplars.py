"""Dataset examples: the natural images that excite each filter most, found in one pass.

Per image and channel, the spatial maximum of the channel's activation and where it is; per
channel, the k strongest images so far. Batches (and shards of the data) are merged with
`TopK.merge`, which keeps the k strongest of both, ties going to the smaller image number: so
merging is associative and commutative, and the result is the same whatever the batching or
the sharding. Memory is k entries a channel, whatever the number of images.

Reading is tf.data: file names listed once (sorted, so an image's number is stable), decoded
in parallel, resized to the model's input and preprocessed in the graph, prefetched. A file
that cannot be decoded is skipped: its number is missing from the numbers the batches carry.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from filterviz.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads
EMPTY = np.iinfo(np.int64).max  # the image number of a slot no image has filled yet: sorts last


@dataclass
class TopK:
    """Per channel (rows), the k strongest images (columns, strongest first): the activation's spatial
    maximum, the image's number and where in the layer's output the maximum is."""

    values: np.ndarray  # (channels, k) float32; -inf where no image yet
    images: np.ndarray  # (channels, k) int64; EMPTY where no image yet
    ys: np.ndarray  # (channels, k) int32
    xs: np.ndarray  # (channels, k) int32

    @classmethod
    def empty(cls, channels: int, k: int) -> "TopK":
        shape = (channels, k)
        return cls(np.full(shape, -np.inf, np.float32), np.full(shape, EMPTY, np.int64),
                   np.zeros(shape, np.int32), np.zeros(shape, np.int32))

    @classmethod
    def of_batch(cls, activations: np.ndarray, images: np.ndarray, k: int) -> "TopK":
        """From one batch of activations (batch, height, width, channels) of images numbered `images`."""
        batch, height, width, channels = activations.shape
        flat = np.nan_to_num(activations.reshape(batch, height * width, channels).astype(np.float32), nan=-np.inf)
        where = flat.argmax(axis=1)  # (batch, channels): the first maximum in row-major order
        best = np.take_along_axis(flat, where[:, None, :], axis=1)[:, 0, :]
        found = cls(best.T, np.broadcast_to(np.asarray(images, np.int64)[None, :], (channels, batch)).copy(),
                    (where // width).T.astype(np.int32), (where % width).T.astype(np.int32))
        return cls.empty(channels, k).merge(found)

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def merge(self, other: "TopK") -> "TopK":
        """The k strongest of both, per channel; equal activations in image order."""
        values = np.concatenate([self.values, other.values], axis=1)
        images = np.concatenate([self.images, other.images], axis=1)
        ys = np.concatenate([self.ys, other.ys], axis=1)
        xs = np.concatenate([self.xs, other.xs], axis=1)
        order = np.lexsort((images, -values), axis=1)[:, : self.k]  # the last key sorts first
        pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return TopK(pick(values), pick(images), pick(ys), pick(xs))

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"values": self.values, "images": self.images, "ys": self.ys, "xs": self.xs}

    @classmethod
    def from_arrays(cls, arrays) -> "TopK":
        return cls(*(np.asarray(arrays[name]) for name in ("values", "images", "ys", "xs")))


def image_files(folder: os.PathLike) -> List[Path]:
    """Every image file under `folder`, sorted: an image's number is its place in this list."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"data={folder}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"data={folder}: no images there ({', '.join(IMAGE_SUFFIXES)}, in it or below)")
    return files


def dataset(files: Sequence[Path], numbers: Sequence[int], input_size: int, channels: int, batch: int,
            preprocess: Optional[Callable] = None) -> tf.data.Dataset:
    """(images, numbers) batches: decoded in parallel (gray, alpha and 16-bit images to `channels` 8-bit
    channels), resized to `input_size` square, [0, 1], then `preprocess` (the model's, in the graph);
    an undecodable file is dropped (its number is then missing from the numbers seen)."""
    def load(path, number):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, dtype=tf.uint8, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (input_size, input_size), antialias=True)
        return tf.clip_by_value(image, 0.0, 1.0), number

    data = tf.data.Dataset.from_tensor_slices(([str(f) for f in files], np.asarray(numbers, np.int64)))
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.apply(tf.data.experimental.ignore_errors()).batch(batch)
    if preprocess is not None:
        data = data.map(lambda images, number: (preprocess(images), number), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def layers_model(model: keras.Model, layers: Sequence[str]) -> keras.Model:
    """One model with every requested layer as an output, (batch, units) ones as (batch, 1, 1, units):
    one forward pass a batch for all of them."""
    outputs = []
    for name in layers:
        output = model.get_layer(name).output
        outputs.append(keras.layers.Reshape((1, 1, output.shape[-1]))(output) if len(output.shape) == 2 else output)
    return keras.Model(model.inputs, outputs)


def scan(model: keras.Model, layers: Sequence[str], batches: Iterable[Tuple[np.ndarray, np.ndarray]], k: int,
         found: Optional[Dict[str, TopK]] = None,
         after_batch: Optional[Callable[[Dict[str, TopK], np.ndarray], None]] = None) -> Dict[str, TopK]:
    """Per layer, the top k images of every channel over `batches`, merged into `found` (a resumed
    pass's); `after_batch(found, numbers)` after each batch (progress, checkpoints)."""
    forward = layers_model(model, layers)
    step = tf.function(lambda images: forward(images, training=False), reduce_retracing=True)
    found = dict(found or {})
    for images, numbers in batches:
        activations = step(images)
        activations = activations if isinstance(activations, (list, tuple)) else [activations]
        numbers = np.asarray(numbers)
        for name, output in zip(layers, activations):
            batch = TopK.of_batch(np.asarray(output), numbers, k)
            found[name] = found[name].merge(batch) if name in found else batch
        if after_batch is not None:
            after_batch(found, numbers)
    return found


def crop(image: np.ndarray, box: Tuple[int, int, int, int], input_size: int, fill: float = 0.5) -> np.ndarray:
    """The part of the original `image` (height, width, channels) that a unit's receptive field
    `box` (top, left, bottom, right, inclusive, in the model's `input_size` square input) covers,
    scaled back by the resize; what lies past the picture's edge (padding) is `fill`."""
    height, width = image.shape[:2]
    top, left, bottom, right = box
    rows = (np.floor(top * height / input_size), np.ceil((bottom + 1) * height / input_size))
    cols = (np.floor(left * width / input_size), np.ceil((right + 1) * width / input_size))
    (r0, r1), (c0, c1) = (map(int, rows)), (map(int, cols))
    out = np.full((r1 - r0, c1 - c0, image.shape[2]), fill, dtype=np.float32)
    src = image[max(r0, 0):min(r1, height), max(c0, 0):min(c1, width)]
    out[max(r0, 0) - r0:max(r0, 0) - r0 + src.shape[0], max(c0, 0) - c0:max(c0, 0) - c0 + src.shape[1]] = src
    return out
