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

import itertools
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from filterviz.core.hardware import usable_cores
from filterviz.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads
EMPTY = np.iinfo(np.int64).max  # the image number of a slot no image has filled yet: sorts last


def spatial_maxima(activations: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per image and channel of (batch, height, width, channels) activations, the largest value
    (NaN as -inf) and its flat position y * width + x (the first in row-major order): (batch, channels) each."""
    batch, height, width, channels = activations.shape
    flat = np.nan_to_num(activations.reshape(batch, height * width, channels).astype(np.float32), nan=-np.inf)
    where = flat.argmax(axis=1)
    return np.take_along_axis(flat, where[:, None, :], axis=1)[:, 0, :], where


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
        return cls.of_maxima(*spatial_maxima(activations), activations.shape[2], images, k)

    @classmethod
    def of_maxima(cls, best: np.ndarray, where: np.ndarray, width: int, images: np.ndarray, k: int,
                  into: Optional["TopK"] = None) -> "TopK":
        """From a batch's `spatial_maxima` of maps `width` wide, of images numbered `images`, merged
        `into` a TopK found before (one sort for both)."""
        batch, channels = best.shape
        into = into or cls.empty(channels, k)
        # only the channels where an image of the batch can enter, as strong as the k-th at least
        # (after the first batches, few: the merge is then a small part of the pass)
        rows = np.flatnonzero((best.T >= into.values[:, -1:]).any(axis=1))
        found = cls(best.T[rows], np.broadcast_to(np.asarray(images, np.int64)[None, :], (len(rows), batch)),
                    (where.T[rows] // width).astype(np.int32), (where.T[rows] % width).astype(np.int32))
        if len(rows) == channels:
            return into.merge(found)
        part = TopK(*(a[rows] for a in into.arrays().values())).merge(found)
        merged = TopK(*(a.copy() for a in into.arrays().values()))  # `into` stays as it was: a checkpoint's
        for name, array in merged.arrays().items():
            array[rows] = part.arrays()[name]
        return merged

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


JPEG_RATIOS = (8, 4, 2)  # libjpeg decodes straight to 1/8, 1/4 or 1/2 of the size, at that fraction of the work


def decode(contents: tf.Tensor, channels: int, input_size: int) -> tf.Tensor:
    """Any image file's bytes as `channels` 8-bit channels. A JPEG whose shorter side is many times
    `input_size` is decoded at 1/2, 1/4 or 1/8 of its size, still at least twice `input_size` (a huge
    photograph costs neither its full memory nor its full decode, and is resized down anyway)."""
    def full():
        return tf.io.decode_image(contents, channels=channels, dtype=tf.uint8, expand_animations=False)

    def scaled(ratio):
        return lambda: tf.io.decode_jpeg(contents, channels=channels, ratio=ratio)

    def jpeg():
        shorter = tf.reduce_min(tf.image.extract_jpeg_shape(contents)[:2])
        branches = [(shorter >= 2 * input_size * r, scaled(r)) for r in JPEG_RATIOS]
        return tf.case(branches, default=full, exclusive=False)

    return tf.cond(tf.io.is_jpeg(contents), jpeg, full)


def dataset(files: Sequence[Path], numbers: Sequence[int], input_size: int, channels: int, batch: int,
            preprocess: Optional[Callable] = None, display_size: Optional[int] = None) -> tf.data.Dataset:
    """(images, numbers) batches: decoded in parallel (gray, alpha and 16-bit images to `channels` 8-bit
    channels), resized to `input_size` square, [0, 1], then `preprocess` (the model's, in the graph);
    an undecodable file is dropped (its number is then missing from the numbers seen). With
    `display_size`, (images, numbers, displays): each image also at that side, from the same decode."""
    def load(path, number):
        # decoded as the pass decodes it, so the fed image is the pass's to the bit; that decode keeps
        # at least twice the input side, enough for a display of up to that size
        image = tf.cast(decode(tf.io.read_file(path), channels, input_size), tf.float32) / 255.0
        sized = lambda side: tf.clip_by_value(tf.image.resize(image, (side, side), antialias=True), 0.0, 1.0)  # noqa: E731
        return (sized(input_size), number) + (() if display_size is None else (sized(display_size),))

    data = tf.data.Dataset.from_tensor_slices((tf.constant([str(f) for f in files], tf.string),
                                               np.asarray(numbers, np.int64)))
    data = data.map(load, num_parallel_calls=usable_cores(), deterministic=True)
    data = data.ignore_errors().batch(batch)
    if preprocess is not None:
        data = data.map(lambda images, *rest: (preprocess(images), *rest))
    # Fixed parallelism, no autotuning: its thread made ending the iterator take ~2 s at random
    # (a pass over 1,024 images 20 % slower, one time in two), and reading is cheap beside the network
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.prefetch(2).with_options(options)


def layers_model(model: keras.Model, layers: Sequence[str]) -> keras.Model:
    """One model with every requested layer as an output, as a run cuts it (models.cut_at: a softmax
    at its logits, (batch, units) as (batch, 1, 1, units)): one forward pass a batch for all of them."""
    from filterviz.core.models import cut_at

    return keras.Model(model.inputs, [cut_at(model, name).extractor.outputs[0] for name in layers])


def forward_step(model: keras.Model, layers: Sequence[str]) -> Callable[[tf.Tensor], List[np.ndarray]]:
    """A compiled forward pass to every layer: a batch in, each layer's activations out."""
    forward = layers_model(model, layers)
    step = tf.function(lambda images: forward(images, training=False), reduce_retracing=True)

    def run(images) -> List[np.ndarray]:
        outputs = step(images)
        return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    return run


def map_maxima(output: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`spatial_maxima` in the graph, in the map's own precision (a bfloat16 model's maps are not
    copied to float32: that copy costs more than the network): (batch, channels) float32 maxima and
    int32 flat positions.

    Max pools over rows and over columns are vectorised where an argmax over the whole map is not
    (it cost a quarter of VGG16's forward pass in bfloat16): the first row holding the maximum, and
    the first column holding one in any row, name the first maximum in row-major order wherever
    that column's maximum is in that row. Elsewhere (ties across rows, 0.02-3 % of them in VGG16)
    the row itself is searched."""
    height, width, channels = output.shape[1:]
    if height is None or width is None:  # pools need the map's size: one argmax over the whole map
        flat = tf.reshape(output, (tf.shape(output)[0], -1, channels))
        where = tf.argmax(flat, axis=1, output_type=tf.int32)  # the first maximum, as numpy's
        at = where * channels + tf.range(channels)
        return tf.cast(tf.gather(tf.reshape(flat, (tf.shape(output)[0], -1)), at, axis=1, batch_dims=1),
                       tf.float32), where
    rows = tf.nn.max_pool2d(output, (1, width), (1, width), "VALID")[:, :, 0, :]  # (batch, height, channels)
    columns = tf.nn.max_pool2d(output, (height, 1), (height, 1), "VALID")[:, 0, :, :]  # (batch, width, channels)
    best = tf.reduce_max(rows, axis=1)
    y = tf.argmax(rows, axis=1, output_type=tf.int32)
    x = tf.argmax(columns, axis=1, output_type=tf.int32)
    images = tf.broadcast_to(tf.range(tf.shape(y)[0])[:, None], tf.shape(y))
    units = tf.broadcast_to(tf.range(channels)[None, :], tf.shape(y))
    elsewhere = tf.cast(tf.where(tf.gather_nd(output, tf.stack([images, y, x, units], axis=-1)) != best), tf.int32)
    count = tf.shape(elsewhere)[0]
    along = lambda column: tf.broadcast_to(column, (count, width))  # noqa: E731
    row = tf.gather_nd(output, tf.stack([along(elsewhere[:, :1]), along(tf.gather_nd(y, elsewhere)[:, None]),
                                          along(tf.range(width)[None, :]), along(elsewhere[:, 1:])], axis=-1))
    x = tf.tensor_scatter_nd_update(x, elsewhere, tf.argmax(row, axis=1, output_type=tf.int32))
    return tf.cast(best, tf.float32), y * width + x


def maxima_step(model: keras.Model, layers: Sequence[str]) -> Callable[[tf.Tensor], List[Tuple[np.ndarray, np.ndarray]]]:
    """A compiled forward pass that returns, per layer, each image's `spatial_maxima` (computed in the
    graph: a (batch, channels) pair leaves it, not the layer's whole map). Maps are not screened for
    NaN here, as `spatial_maxima` does: a pass over every map for a network that has already failed."""
    steps = _MAXIMA_STEPS.setdefault(model, {})
    if tuple(layers) not in steps:  # traced once per model and layers in a process, not once per pass
        forward = layers_model(model, layers)

        def maxima(images):
            outputs = forward(images, training=False)
            return [map_maxima(output) for output in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

        steps[tuple(layers)] = tf.function(maxima, reduce_retracing=True)
    step = steps[tuple(layers)]
    return lambda images: [(np.asarray(best), np.asarray(where)) for best, where in step(images)]


_MAXIMA_STEPS: "weakref.WeakKeyDictionary[keras.Model, Dict[tuple, Callable]]" = weakref.WeakKeyDictionary()


def map_widths(model: keras.Model, layers: Sequence[str], input_size: int) -> List[int]:
    """Each layer's map width at `input_size`: a maximum's flat position is y * width + x."""
    outputs = layers_model(model, layers).compute_output_shape((1, input_size, input_size, model.input_shape[-1]))
    outputs = outputs if isinstance(outputs, list) and isinstance(outputs[0], (tuple, list)) else [outputs]
    return [int(shape[2]) for shape in outputs]


def scan(model: keras.Model, layers: Sequence[str], batches: Iterable[Tuple[np.ndarray, np.ndarray]], k: int,
         found: Optional[Dict[str, TopK]] = None,
         after_batch: Optional[Callable[[Dict[str, TopK], np.ndarray, List[Tuple[np.ndarray, np.ndarray]]], None]] = None,
         input_size: Optional[int] = None) -> Dict[str, TopK]:
    """Per layer, the top k images of every channel over `batches`, merged into `found` (a resumed
    pass's); `after_batch(found, numbers, maxima)` after each batch (maxima, progress, checkpoints)."""
    step = maxima_step(model, layers)
    widths = None
    found = dict(found or {})
    # The next batch's forward pass runs in a thread (TensorFlow lets go of the GIL) while this one's
    # top k is merged and spilled here. A stop signal lands here, between batches' merges.
    worker = ThreadPoolExecutor(1, thread_name_prefix="filterviz-maxima")
    try:
        pending = None
        for images, numbers in itertools.chain(batches, [(None, None)]):
            running = None if images is None else worker.submit(step, images)
            if pending is not None:
                found = _merged(found, layers, widths, k, *pending)
                if after_batch is not None:
                    after_batch(found, pending[0], pending[1])
            if running is not None:
                widths = widths or map_widths(model, layers, input_size or images.shape[1])
                pending = (np.asarray(numbers), running.result())
    finally:
        worker.shutdown(wait=True, cancel_futures=True)
    return found


def _merged(found: Dict[str, TopK], layers: Sequence[str], widths: Sequence[int], k: int, numbers: np.ndarray,
            maxima: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, TopK]:
    merged = dict(found)  # a new dict per batch: a stop signal mid-merge leaves the last one whole
    for name, (best, where), width in zip(layers, maxima, widths):
        merged[name] = TopK.of_maxima(best, where, width, numbers, k, into=merged.get(name))
    return merged


class Maxima:
    """Every image's spatial maximum per channel of one layer, and where it is, for the quantiles:
    on disk (values as float32, flat positions as uint32), a row per image of [start, stop), so
    memory does not grow with the images. Rows are written at the image's place: a resumed pass
    writes again what it computes again."""

    READ_ROWS = 4096  # rows read at a time when picking

    def __init__(self, folder: Path, layer: str, channels: int, start: int, stop: int):
        self.channels, self.start, self.stop = channels, start, stop
        self.paths = (Path(folder) / f"maxima-{layer}.f32", Path(folder) / f"where-{layer}.u32")
        for path, dtype in zip(self.paths, (np.float32, np.uint32)):
            size = (stop - start) * channels * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != size:
                with open(path, "wb") as f:
                    f.truncate(size)  # sparse: no memory, no disk until written

    def write(self, numbers: np.ndarray, best: np.ndarray, where: np.ndarray) -> None:
        for path, rows in zip(self.paths, (best.astype(np.float32), where.astype(np.uint32))):
            fd = os.open(path, os.O_WRONLY)
            try:
                if len(numbers) and (np.diff(numbers) == 1).all():  # consecutive images: one write
                    os.pwrite(fd, np.ascontiguousarray(rows).tobytes(), int(numbers[0] - self.start) * rows[0].nbytes)
                    continue
                for number, row in zip(numbers, rows):
                    os.pwrite(fd, row.tobytes(), int(number - self.start) * row.nbytes)
            finally:
                os.close(fd)

    def columns(self, c0: int, c1: int) -> Tuple[np.ndarray, np.ndarray]:
        """Channels [c0, c1) of every row: (rows, c1 - c0) values (float32) and positions."""
        out = []
        for path, dtype in zip(self.paths, (np.float32, np.uint32)):
            parts = []
            with open(path, "rb") as f:
                for row in range(0, self.stop - self.start, self.READ_ROWS):
                    count = min(self.READ_ROWS, self.stop - self.start - row) * self.channels
                    block = np.fromfile(f, dtype=dtype, count=count).reshape(-1, self.channels)
                    parts.append(block[:, c0:c1].copy())
            out.append(np.concatenate(parts) if parts else np.zeros((0, c1 - c0), dtype))
        return out[0], out[1]


def quantile_picks(parts: Sequence[Tuple[Maxima, np.ndarray]], quantiles: Sequence[float], width: int,
                   budget: int = 64 << 20) -> Dict[float, TopK]:
    """Per quantile q and channel, the image at that place among all images (`parts`: a layer's
    Maxima of each shard, with the rows seen): the one at rank ceil(q * n) from the bottom, ties
    in image order, so it is an image, not an interpolation. As TopK with one column. Reads the
    channels a block at a time, the block sized so its columns of every image fit in `budget` bytes."""
    channels = parts[0][0].channels
    n = sum(int(seen.sum()) for _, seen in parts)
    picks = {q: TopK.empty(channels, 1) for q in quantiles}
    if n == 0:
        return picks
    block = max(1, min(channels, budget // (n * 8)))
    for c0 in range(0, channels, block):
        c1 = min(channels, c0 + block)
        values, where, numbers = [], [], []
        for maxima, seen in parts:
            v, w = maxima.columns(c0, c1)
            values.append(v[seen])
            where.append(w[seen])
            numbers.append(np.flatnonzero(seen) + maxima.start)
        values, where, numbers = np.concatenate(values), np.concatenate(where), np.concatenate(numbers)
        for channel in range(c1 - c0):
            order = np.lexsort((numbers, values[:, channel]))
            for q, found in picks.items():
                i = order[min(n - 1, max(0, int(np.ceil(round(q * n, 9))) - 1))]  # 0.9 * 10 is 9.000000000000002
                found.values[c0 + channel, 0] = values[i, channel]
                found.images[c0 + channel, 0] = numbers[i]
                found.ys[c0 + channel, 0], found.xs[c0 + channel, 0] = divmod(int(where[i, channel]), width)
    return picks


def field_crops(images: np.ndarray, boxes: np.ndarray, index: np.ndarray, input_size: int, size: int,
                fill: float = 1.0) -> np.ndarray:
    """The part of an image that each unit's receptive field covers, as a `size`-pixel square.
    `images` (n, side, side, channels): the originals resized square (as the model sees them, at
    any side); `boxes` (m, 4): each field's top, left, bottom, right (inclusive) in the model's
    `input_size` input; `index` (m,): its image. Bilinear, in one batched op (tf.image.crop_and_resize,
    whose corner-aligned samples land on pixel centres: a field cropped at its own size from an
    image at the input's size is its pixels exactly); past the picture's edge (padding), `fill`."""
    side = images.shape[1]
    scale = side / input_size
    first = boxes[:, :2] * scale  # the first and last pixel of the field in the image at `side`
    last = (boxes[:, 2:] + 1) * scale - 1
    normal = np.concatenate([first, last], axis=1) / max(side - 1, 1)
    return tf.image.crop_and_resize(images, normal.astype(np.float32), np.asarray(index, np.int32), (size, size),
                                    extrapolation_value=fill).numpy()
