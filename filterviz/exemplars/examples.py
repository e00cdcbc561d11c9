"""A finished pass as what a person looks at: per filter a strip of its top images and its quantile
images, each cropped to the unit's receptive field with the unit's activation map over it, and a
table saying where every example comes from (file, location, activation, field).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from filterviz.core import exemplars
from filterviz.core.exemplars import EMPTY, TopK
from filterviz.core.receptive import receptive_field

TILE = 64  # pixels a side of each example in a strip
GAP = 6  # between the top images and the quantile images
DISPLAY_SIDE = 4  # originals are cropped from a copy at most this many input sides long
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
    return f"{FOLDER}/{layer}/f{channel:04d}.png"


def write(found: Found, files: Sequence[Path], root: Path, model: keras.Model, input_size: int, fed: str,
          out: Path) -> Dict[str, list]:
    """The strips, the arrays and the table into `out` (a run's results folder); returns the table."""
    from filterviz.core.models import preprocessor

    rows: Dict[str, list] = {name: [] for name in ("layer", "filter", "kind", "rank", "file", "image", "y", "x",
                                                   "activation", "field", "strip")}
    (out / FOLDER / "arrays").mkdir(parents=True, exist_ok=True)
    for layer in found.top:
        np.savez(out / FOLDER / "arrays" / f"{layer}.npz", **found.top[layer].arrays(),
                 **{f"q{q:g}/{name}": a for q, picks in found.quantiles[layer].items() for name, a in picks.arrays().items()})
        field = receptive_field(model, layer, input_size)
        slots = found.slots(layer)
        channels = found.top[layer].values.shape[0]
        tiles = np.full((channels, len(slots), TILE, TILE, 3), 255, np.uint8)
        activation = np.full((channels, len(slots)), np.nan, np.float32)
        users: Dict[int, List[Tuple[int, int]]] = {}  # image -> (channel, slot) showing it
        for slot, (_, picks, column) in enumerate(slots):
            for channel in range(channels):
                image = int(picks.images[channel, column])
                if image != EMPTY:
                    users.setdefault(image, []).append((channel, slot))
        numbers = sorted(users)
        step = exemplars.forward_step(model, [layer])
        data = exemplars.dataset([files[i] for i in numbers], numbers, input_size, 3, 32, preprocessor(fed))
        for batch, batch_numbers in data.as_numpy_iterator():
            [maps] = step(batch)
            for maps_of_one, number in zip(maps, batch_numbers):
                original = _display_copy(files[number], input_size)
                for channel, slot in users[int(number)]:
                    _, picks, column = slots[slot]
                    y, x = int(picks.ys[channel, column]), int(picks.xs[channel, column])
                    value = float(maps_of_one[y, x, channel])
                    activation[channel, slot] = value
                    tiles[channel, slot] = _tile(original, maps_of_one[..., channel], value, field.box(y, x, input_size),
                                                 input_size)
        (out / FOLDER / layer).mkdir(parents=True, exist_ok=True)
        for channel in range(channels):
            name = strip_name(layer, channel)
            _strip(tiles[channel], found.top[layer].k).save(out / name)
            for slot, (kind, picks, column) in enumerate(slots):
                image = int(picks.images[channel, column])
                if image == EMPTY:
                    continue
                y, x = int(picks.ys[channel, column]), int(picks.xs[channel, column])
                rows["layer"].append(layer)
                rows["filter"].append(channel)
                rows["kind"].append(kind)
                rows["rank"].append(column + 1 if kind == "top" else 0)
                rows["file"].append(str(files[image].relative_to(root)))
                rows["image"].append(image)
                rows["y"].append(y)
                rows["x"].append(x)
                rows["activation"].append(float(activation[channel, slot]))
                rows["field"].append(list(field.box(y, x, input_size)))
                rows["strip"].append(name)
    (out / TABLE).write_text(json.dumps(rows))
    return rows


def _display_copy(path: Path, input_size: int) -> np.ndarray:
    """The original image as RGB in [0, 1], no longer than DISPLAY_SIDE input sides (a huge photograph
    is shown, not kept whole)."""
    image = exemplars.decode(tf.io.read_file(str(path)), 3, input_size)
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, DISPLAY_SIDE * input_size / max(height, width))
    if scale < 1.0:
        image = tf.image.resize(image, (max(1, round(height * scale)), max(1, round(width * scale))), antialias=True)
    return np.asarray(image, np.float32) / 255.0


def _tile(original: np.ndarray, unit_map: np.ndarray, value: float, box, input_size: int) -> np.ndarray:
    """The unit's receptive field in the original, dimmed where the channel's map (upsampled to the
    input) is weaker than at the unit: the activation map over the crop."""
    piece = exemplars.crop(original, box, input_size, fill=1.0)
    upsampled = np.asarray(tf.image.resize(unit_map[..., None].astype(np.float32), (input_size, input_size)))
    strength = np.clip(upsampled / value, 0.0, 1.0) if value > 0 else np.zeros_like(upsampled)
    over = exemplars.crop(strength, box, input_size, fill=0.0)
    picture = np.asarray(Image.fromarray((piece * 255).astype(np.uint8)).resize((TILE, TILE), Image.BILINEAR),
                         np.float32)
    mask = np.asarray(Image.fromarray((over[..., 0] * 255).astype(np.uint8)).resize((TILE, TILE), Image.BILINEAR),
                      np.float32)[..., None] / 255.0
    return (picture * (0.3 + 0.7 * mask)).astype(np.uint8)


def _strip(tiles: np.ndarray, k: int) -> Image.Image:
    """The top k tiles, a gap, then the quantile tiles, in one row."""
    width = len(tiles) * TILE + (GAP if len(tiles) > k else 0)
    strip = np.full((TILE, width, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        left = i * TILE + (GAP if i >= k else 0)
        strip[:, left:left + TILE] = tile
    return Image.fromarray(strip)
