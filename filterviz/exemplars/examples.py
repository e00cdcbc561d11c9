"""A finished pass as what a person looks at: per filter a strip of its top images and its quantile
images, each cropped to the unit's receptive field with the unit's activation map over it, and a
table saying where every example comes from (file, location, activation, field).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from filterviz import stops
from filterviz.core import exemplars
from filterviz.core.exemplars import EMPTY, TopK
from filterviz.core.receptive import receptive_field

TILE = 64  # pixels a side of each example in a strip
GAP = 6  # between the top images and the quantile images
DISPLAY_SIDE = 2  # examples are cropped from a copy of each image this many input sides square
RENDER_BATCH = 8  # images at a time while drawing (the maps of a group's layers of them all are held)
TILE_BUDGET = 192 << 20  # bytes of tiles held at once: layers are drawn in groups that fit
TABLE = "examples.json"
FOLDER = "examples"  # in the run's results and artifacts: <layer>/f0012.png, arrays/<layer>.npz


@dataclass
class Found:
    """A whole pass: per layer the top k of every channel, and per quantile one image a channel."""

    top: Dict[str, TopK]
    quantiles: Dict[str, Dict[float, TopK]]
    seen: np.ndarray  # bool, an entry per file of the folder
    seconds: float

    def slots(self, layer: str) -> List[Tuple[str, TopK, int]]:
        """The strip's examples in order: (kind, where it is, column): top 1..k, then each quantile."""
        top = self.top[layer]
        return [*(("top", top, i) for i in range(top.k)),
                *((f"q{q:g}", picks, 0) for q, picks in self.quantiles[layer].items())]


def strip_name(layer: str, channel: int) -> str:
    return f"{FOLDER}/{layer}/f{channel:04d}.jpg"  # photographs: JPEG is 10x faster to write than PNG


@dataclass
class Drawing:
    """One layer's strips while they are drawn: which images show in which (filter, slot)."""

    layer: str
    slots: List[Tuple[str, TopK, int]]
    drawn: List[int]  # the filters drawn
    tiles: np.ndarray  # (filters, slots, TILE, TILE, 3)
    activation: np.ndarray  # (filters, slots): the unit's activation in its example
    users: Dict[int, List[Tuple[int, int]]]  # image -> the (filter, slot) pairs that show it


def write(found: Found, files: Sequence[Path], root: Path, model: keras.Model, input_size: int, fed: str,
          out: Path, channels: Optional[Dict[str, List[int]]] = None) -> Dict[str, list]:
    """The strips, the arrays and the table into `out` (a run's results folder); returns the table.
    `channels`: per layer, the filters to draw and list (default: every one). The layers are drawn
    in groups whose tiles fit in TILE_BUDGET bytes, one forward pass over a group's images each."""
    rows: Dict[str, list] = {name: [] for name in ("layer", "filter", "kind", "rank", "file", "image", "y", "x",
                                                   "activation", "field", "strip")}
    (out / FOLDER / "arrays").mkdir(parents=True, exist_ok=True)
    for layer in found.top:
        with stops.deferred():  # a stop inside numpy's zip writer would leave it raising its own error
            np.savez(out / FOLDER / "arrays" / f"{layer}.npz", **found.top[layer].arrays(),
                     **{f"q{q:g}/{name}": a for q, picks in found.quantiles[layer].items()
                        for name, a in picks.arrays().items()})
    group, size = [], 0
    for layer in found.top:
        count = found.top[layer].values.shape[0]
        drawn = list(range(count)) if channels is None else [c for c in channels.get(layer, []) if c < count]
        bytes_ = len(drawn) * len(found.slots(layer)) * TILE * TILE * 3
        if group and size + bytes_ > TILE_BUDGET:
            _draw_group(group, found, files, root, model, input_size, fed, out, rows)
            group, size = [], 0
        group.append((layer, drawn))
        size += bytes_
    if group:
        _draw_group(group, found, files, root, model, input_size, fed, out, rows)
    (out / TABLE).write_text(json.dumps(rows))
    return rows


def _draw_group(group, found: Found, files: Sequence[Path], root: Path, model: keras.Model, input_size: int,
                fed: str, out: Path, rows: Dict[str, list]) -> None:
    from filterviz.core.models import preprocessor

    drawings = []
    for layer, drawn in group:
        slots = found.slots(layer)
        count = found.top[layer].values.shape[0]
        drawing = Drawing(layer, slots, drawn, np.full((count, len(slots), TILE, TILE, 3), 255, np.uint8),
                          np.full((count, len(slots)), np.nan, np.float32), {})
        for slot, (_, picks, column) in enumerate(slots):
            for channel in drawn:
                image = int(picks.images[channel, column])
                if image != EMPTY:
                    drawing.users.setdefault(image, []).append((channel, slot))
        drawings.append(drawing)
    numbers = sorted(set().union(*(d.users for d in drawings)))
    fields = {d.layer: receptive_field(model, d.layer, input_size) for d in drawings}
    step = exemplars.forward_step(model, [d.layer for d in drawings])
    channels = int(model.input_shape[-1])
    batches = exemplars.dataset([files[i] for i in numbers], numbers, input_size, channels, RENDER_BATCH,
                                preprocessor(fed, channels), display_size=DISPLAY_SIDE * input_size)
    for batch, batch_numbers, display in batches.as_numpy_iterator():
        if channels != 3:  # tiles are RGB: a gray model's images shown gray
            display = np.repeat(display[..., :1], 3, axis=-1)
        for drawing, maps in zip(drawings, step(batch)):
            uses = [(b, channel, slot) for b, number in enumerate(batch_numbers)
                    for channel, slot in drawing.users.get(int(number), [])]
            if not uses:
                continue
            where = [(int(drawing.slots[slot][1].ys[channel, drawing.slots[slot][2]]),
                      int(drawing.slots[slot][1].xs[channel, drawing.slots[slot][2]])) for _, channel, slot in uses]
            index, chosen = np.array([u[0] for u in uses]), np.array([u[1] for u in uses])
            values = maps[index, [y for y, _ in where], [x for _, x in where], chosen].astype(np.float32)
            boxes = np.array([shown_box(fields[drawing.layer].box(y, x, input_size), input_size) for y, x in where],
                             np.float32)
            drawn_tiles = _tiles(display, maps[index, :, :, chosen].astype(np.float32), values, index, boxes, input_size)
            for (_, channel, slot), value, tile in zip(uses, values, drawn_tiles):
                drawing.activation[channel, slot] = value
                drawing.tiles[channel, slot] = tile
    for drawing in drawings:
        layer, field = drawing.layer, fields[drawing.layer]
        (out / FOLDER / layer).mkdir(parents=True, exist_ok=True)
        for channel in drawing.drawn:
            name = strip_name(layer, channel)
            _strip(drawing.tiles[channel], found.top[layer].k).save(out / name, quality=90)
            for slot, (kind, picks, column) in enumerate(drawing.slots):
                image = int(picks.images[channel, column])
                if image == EMPTY:
                    continue
                y, x = int(picks.ys[channel, column]), int(picks.xs[channel, column])
                for key, value in (("layer", layer), ("filter", channel), ("kind", kind),
                                   ("rank", column + 1 if kind == "top" else 0),
                                   ("file", str(files[image].relative_to(root))), ("image", image), ("y", y), ("x", x),
                                   ("activation", float(drawing.activation[channel, slot])),
                                   ("field", list(field.box(y, x, input_size))), ("strip", name)):
                    rows[key].append(value)


def shown_box(box, input_size: int):
    """What a tile shows of a unit's field: the field itself (past the picture's edge, the padding,
    white), or the whole picture for a field at least as large as the picture (deep layers, whose
    field would otherwise show the picture small in a frame of padding)."""
    top, left, bottom, right = box
    if bottom - top + 1 >= input_size and right - left + 1 >= input_size:
        return 0, 0, input_size - 1, input_size - 1
    return box


def _tiles(display: np.ndarray, unit_maps: np.ndarray, values: np.ndarray, index: np.ndarray, boxes: np.ndarray,
           input_size: int) -> np.ndarray:
    """Each example's tile: its unit's receptive field `boxes` (top, left, bottom, right in the input)
    cropped from the `display` copies of the batch's images (image `index`), dimmed where the unit's
    channel (`unit_maps`, one map a tile) is weaker than at the unit (`values`): the activation map
    over the crop. Bilinear crops of the whole batch at once; past the image's edge, white."""
    top, left, bottom, right = (boxes[:, i] for i in range(4))
    pictures = exemplars.field_crops(display, boxes, index, input_size, TILE)
    height, width = unit_maps.shape[1:3]
    # map pixel i is centred on input (i + 0.5) * input / height (the first and last samples on the
    # field's first and last pixel centres); one edge pixel of padding each side
    # so a field at the picture's border samples the border's value, not nothing
    padded = np.pad(unit_maps, ((0, 0), (1, 1), (1, 1)), mode="edge")[..., None]
    to_map = lambda u, n: (u * n / input_size - 0.5 + 1) / (n + 1)  # noqa: E731
    over = np.stack([to_map(top + 0.5, height), to_map(left + 0.5, width), to_map(bottom + 0.5, height),
                     to_map(right + 0.5, width)], 1)
    strength = tf.image.crop_and_resize(padded, over.astype(np.float32), np.arange(len(index)), (TILE, TILE)).numpy()
    mask = np.where(values[:, None, None, None] > 0,
                    np.clip(strength / np.maximum(values, 1e-30)[:, None, None, None], 0.0, 1.0), 0.0)
    return (np.clip(pictures * (0.3 + 0.7 * mask), 0, 1) * 255).astype(np.uint8)


def _strip(tiles: np.ndarray, k: int) -> Image.Image:
    """The top k tiles, a gap, then the quantile tiles, in one row."""
    width = len(tiles) * TILE + (GAP if len(tiles) > k else 0)
    strip = np.full((TILE, width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        left = i * TILE + (GAP if i >= k else 0)
        strip[:, left:left + TILE] = tile
    return Image.fromarray(strip)
