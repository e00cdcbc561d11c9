"""What an atlas is made of: its layers, the filters still to do, and the jobs that do them.

Plain data, no TensorFlow, Hydra or MLflow: the sweeper (hydra_plugins/filterviz_atlas) feeds
it the model's convolutions and the filters the store already holds.
"""

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from filterviz.core.models import ConvLayer
from filterviz.errors import ConfigError

BATCHES_PER_JOB = 4  # a job holds about this many batches of the atlas's deepest layer


@dataclass(frozen=True)
class Job:
    layer: str
    filters: Tuple[int, ...]  # contiguous

    def overrides(self) -> List[str]:
        return [f"layer={self.layer}", f"filters={self.filters[0]}:{self.filters[-1] + 1}"]

    @property
    def name(self) -> str:
        return f"{self.layer} f{self.filters[0]}-{self.filters[-1]}"


def select_layers(layers: Sequence[ConvLayer], wanted, key: str = "atlas.layers") -> List[ConvLayer]:
    """`all` (every convolution), a name, a shell pattern (`block[45]_*`) or a list of them, which
    may name any layer with channels (an activation, a residual Add, the logits); in the model's order."""
    convolutions = [layer.name for layer in layers if layer.convolution]
    if wanted in (None, "all"):
        return [layer for layer in layers if layer.convolution]
    patterns = [wanted] if isinstance(wanted, str) else list(wanted)
    chosen: Set[str] = set()
    for pattern in map(str, patterns):
        matched = fnmatch.filter(convolutions, pattern) or fnmatch.filter([layer.name for layer in layers], pattern)
        if not matched:
            raise ConfigError(f"{key}: {pattern!r} matches no convolution of this model; its convolutions "
                              f"are {', '.join(convolutions)} (any other layer with channels can be named too)")
        chosen.update(matched)
    return [layer for layer in layers if layer.name in chosen]


def chunk_size(layer: ConvLayer, deepest_cost: float, batch_size: int, chunk: Optional[int]) -> int:
    """Filters per job: `chunk` if given, else whole batches worth about BATCHES_PER_JOB batches of
    the deepest layer (early layers are cheap: a job takes many of their filters)."""
    if chunk is not None:
        return chunk
    batches = max(1, round(BATCHES_PER_JOB * deepest_cost / layer.cost))
    return min(layer.filters, batch_size * batches)


def plan_jobs(layers: Sequence[ConvLayer], done: Mapping[str, Set[int]], batch_size: int,
              chunk: Optional[int] = None, per_layer: Optional[int] = None) -> List[Job]:
    """The jobs for every filter of `layers` (the first `per_layer` of each) not in `done`, as
    contiguous runs of at most one chunk."""
    if chunk is not None and chunk < 1:
        raise ConfigError(f"atlas.chunk={chunk}: a job holds at least 1 filter (null: sized by layer cost)")
    if per_layer is not None and per_layer < 1:
        raise ConfigError(f"atlas.per_layer={per_layer}: at least 1 filter of each layer (null: all of them)")
    deepest = max((layer.cost for layer in layers), default=1.0)
    jobs = []
    for layer in layers:
        size = chunk_size(layer, deepest, batch_size, chunk)
        todo = [f for f in range(shown(layer, per_layer)) if f not in done.get(layer.name, set())]
        for run in _contiguous(todo):
            jobs += [Job(layer.name, tuple(run[i : i + size])) for i in range(0, len(run), size)]
    return jobs


def shown(layer: ConvLayer, per_layer: Optional[int]) -> int:
    """How many of the layer's filters the atlas holds."""
    return layer.filters if per_layer is None else min(per_layer, layer.filters)


def _contiguous(numbers: Iterable[int]) -> List[List[int]]:
    runs: List[List[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def identity(params: Mapping[str, str]) -> str:
    """The atlas's id: a digest of the settings that make its pictures. The same settings
    resume the same atlas; any other value starts a new one, so two atlases never mix."""
    return hashlib.sha256(json.dumps(dict(sorted(params.items()))).encode()).hexdigest()[:16]
