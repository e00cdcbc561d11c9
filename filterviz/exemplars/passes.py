"""One pass (or one shard of it) over a folder of images, checkpointed so that the same command
resumes it after any stop, SIGKILL included.

A pass is named by what it computes (`Request.key`: the files, with their sizes and modification
times, the network's fingerprint, the layers, k, the input size, the preprocessing, the precision
and the batch): its checkpoints live in `<checkpoints>/<key>/shard-<i>-of-<n>/`. A checkpoint is the top k of every layer, the images
seen and the next image to read, written to a new file and renamed over the old one, so a kill at
any moment leaves the last whole checkpoint. The per-image maxima (for the quantiles) are written
to their files before each checkpoint; rows written after it are written again on resume.
"""

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
from tqdm import tqdm

from filterviz import stops
from filterviz.core import exemplars
from filterviz.core.exemplars import Maxima, TopK
from filterviz.errors import Stopped

STATE = "state.npz"


@dataclass
class Request:
    """What a pass computes, whoever asked (the command, a run, an atlas)."""

    files: List[Path]  # every image of the folder, sorted: an image's number is its place here
    layers: List[str]
    k: int
    quantiles: List[float]
    input_size: int
    batch_size: int
    fed: str  # the model's preprocessing (models.preprocess_mode), "none" for the [0, 1] image
    precision: str
    fingerprint: str  # the network's (models.fingerprint)
    checkpoints: Path
    checkpoint_seconds: float = 30.0

    def __post_init__(self):
        # the files as they are now: an image replaced under the same name is another pass
        stamps = (f"{f}\t{s.st_size}\t{s.st_mtime_ns}" for f, s in ((f, f.stat()) for f in self.files))
        self.files_digest = hashlib.sha256("\n".join(stamps).encode()).hexdigest()

    @property
    def key(self) -> str:
        what = [self.files_digest, self.layers, self.k, self.quantiles, self.input_size, self.batch_size, self.fed,
                self.precision, self.fingerprint]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def shard_range(self, shard: int, shards: int) -> range:
        """Shard `shard` of `shards`: contiguous whole batches, so each batch is the one the whole
        pass would read (the same activations, to the bit)."""
        batches = -(-len(self.files) // self.batch_size)
        per = -(-batches // shards)
        start = min(len(self.files), shard * per * self.batch_size)
        return range(start, min(len(self.files), start + per * self.batch_size))

    def folder(self, shard: int, shards: int) -> Path:
        return self.checkpoints / self.key / f"shard-{shard}-of-{shards}"


@dataclass
class ShardState:
    """Where a shard's pass stands: what it found and which images it has read."""

    found: Dict[str, TopK]
    seen: np.ndarray  # bool, an entry per image of the shard's range
    next: int  # the number of the next image to read
    seconds: float = 0.0  # spent so far, over every attempt
    complete: bool = False

    def save(self, folder: Path) -> None:
        arrays = {f"{layer}/{name}": a for layer, top in self.found.items() for name, a in top.arrays().items()}
        temporary = folder / f".{STATE}.{os.getpid()}"
        with open(temporary, "wb") as f:
            np.savez(f, seen=self.seen, next=self.next, seconds=self.seconds, complete=self.complete,
                     layers=np.array(list(self.found), dtype=str), **arrays)
        os.replace(temporary, folder / STATE)  # atomic: a kill leaves the old checkpoint or the new one

    @classmethod
    def load(cls, folder: Path) -> Optional["ShardState"]:
        path = folder / STATE
        if not path.is_file():
            return None
        with np.load(path) as saved:
            found = {str(layer): TopK.from_arrays({name: saved[f"{layer}/{name}"] for name in
                                                  ("values", "images", "ys", "xs")}) for layer in saved["layers"]}
            return cls(found, saved["seen"], int(saved["next"]), float(saved["seconds"]), bool(saved["complete"]))


class Progress:
    """A bar with images per second and the time left (on a terminal), and a line every tenth
    of the shard (in a log)."""

    def __init__(self, total: int, done: int, label: str):
        self.total, self.done, self.label = total, done, label
        self.start, self.start_done = time.perf_counter(), done
        self.next_line = done + max(1, total // 10)
        self.bar = tqdm(total=total, initial=done, unit="img", file=sys.stderr, disable=None, leave=False,
                        desc=label)

    def update(self, images: int, position: int) -> None:
        self.bar.update(images)
        if position >= self.next_line or position >= self.total:
            self.next_line = position + max(1, self.total // 10)
            seconds = time.perf_counter() - self.start
            rate = (position - self.start_done) / seconds if seconds > 0 else float("nan")
            left = (self.total - position) / rate if rate > 0 else float("nan")
            self.bar.write(f"{self.label}: images {position}/{self.total} ({100 * position / self.total:.0f} %), "
                           f"{rate:.1f} images/s, about {left:.0f} s left", file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


def run_shard(request: Request, model: keras.Model, shard: int = 0, shards: int = 1,
              on_checkpoint: Optional[Callable[[ShardState], None]] = None) -> ShardState:
    """The pass over the shard's images, from its last checkpoint; a stop signal writes a checkpoint
    before it passes on. `on_checkpoint`: after each checkpoint (the run's progress metrics)."""
    numbers = request.shard_range(shard, shards)
    folder = request.folder(shard, shards)
    folder.mkdir(parents=True, exist_ok=True)
    state = ShardState.load(folder) or ShardState({}, np.zeros(len(numbers), bool), numbers.start)
    if state.complete:
        return state
    maxima = {}
    for layer, width in zip(request.layers, exemplars.map_widths(model, request.layers, request.input_size)):
        units = int(exemplars.layers_model(model, [layer]).outputs[0].shape[-1])
        maxima[layer] = (Maxima(folder, layer, units, numbers.start, numbers.stop), width)
    from filterviz.core.models import preprocessor

    todo = range(state.next, numbers.stop)
    channels = int(model.input_shape[-1])
    data = exemplars.dataset([request.files[i] for i in todo], list(todo), request.input_size, channels,
                             request.batch_size, preprocessor(request.fed, channels))
    label = "examples" if shards == 1 else f"examples, shard {shard + 1}/{shards}"
    progress = Progress(len(numbers), state.next - numbers.start, label)
    last, began = time.perf_counter(), time.perf_counter()
    spent = state.seconds
    # what the batches so far add up to, replaced in one assignment: a stop signal between any two
    # lines leaves it naming a whole number of batches, so a checkpoint never counts half of one
    reached = (state.found, state.seen, state.next)

    def checkpoint(complete: bool = False) -> None:
        with stops.deferred():  # a stop inside numpy's zip writer would leave it raising its own error
            state.found, state.seen, state.next = reached
            state.seconds = spent + time.perf_counter() - began
            state.complete = complete
            state.save(folder)
        if on_checkpoint is not None:
            on_checkpoint(state)

    def after_batch(found, batch_numbers, batch_maxima) -> None:
        nonlocal last, reached
        for layer, (best, where) in zip(request.layers, batch_maxima):
            maxima[layer][0].write(batch_numbers, best, where)  # at the images' places: writing again is harmless
        seen = reached[1].copy()
        seen[batch_numbers - numbers.start] = True
        # the next image to read: past this batch, and past any unreadable files just before it
        reached = (found, seen, int(batch_numbers.max()) + 1)
        progress.update(len(batch_numbers), reached[2] - numbers.start)
        if time.perf_counter() - last >= request.checkpoint_seconds:
            checkpoint()
            last = time.perf_counter()

    try:
        if len(todo):
            exemplars.scan(model, request.layers, data.as_numpy_iterator(), request.k, state.found, after_batch,
                           request.input_size)
    except Stopped:
        checkpoint()
        raise
    finally:
        progress.close()
    found = {layer: reached[0].get(layer) or TopK.empty(maxima[layer][0].channels, request.k)
             for layer in request.layers}  # a shard of unreadable files only: empty slots, ready to merge
    reached = (found, reached[1], numbers.stop)
    checkpoint(complete=True)
    return state


def merged(request: Request, model: keras.Model, states: Sequence[ShardState], shards: int):
    """The whole pass from its shards' states: the top k merged, the quantiles over every image."""
    from filterviz.exemplars.examples import Found

    top: Dict[str, TopK] = {}
    for state in states:
        for layer, found in state.found.items():
            top[layer] = top[layer].merge(found) if layer in top else found
    quantiles = {}
    for layer, width in zip(request.layers, exemplars.map_widths(model, request.layers, request.input_size)):
        channels = top[layer].values.shape[0]
        parts = [(Maxima(request.folder(i, shards), layer, channels, r.start, r.stop), state.seen)
                 for i, (state, r) in enumerate(zip(states, (request.shard_range(i, shards) for i in range(shards))))]
        quantiles[layer] = exemplars.quantile_picks(parts, request.quantiles, width)
    seen = np.concatenate([state.seen for state in states])
    return Found(top, quantiles, seen, sum(state.seconds for state in states))
