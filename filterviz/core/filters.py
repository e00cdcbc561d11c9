"""Parse the `filters` setting into a list of filter indices of a layer."""

from typing import Any, List, Sequence

import numpy as np

from filterviz.errors import ConfigError

FORMS = "an index (3), a list ([0,5,9]), a range (0:16), random, random:N or all"


def parse_filters(spec: Any, n_filters: int, seed: int, layer: str = "the layer") -> List[int]:
    """Resolve `spec` against a layer of `n_filters` filters; `random` draws with `seed`."""
    if isinstance(spec, bool):
        raise _malformed(spec)
    if isinstance(spec, int):
        return _checked([spec], n_filters, layer)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if not spec or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise _malformed(spec)
        return _checked(list(spec), n_filters, layer)
    if not isinstance(spec, str):
        raise _malformed(spec)

    text = spec.strip()
    if text == "all":
        return list(range(n_filters))
    if text == "random" or text.startswith("random:"):
        count = _int(text.partition(":")[2] or "1", spec)
        if not 1 <= count <= n_filters:
            raise ConfigError(f"filters={spec}: {layer} has {n_filters} filters, so N must be in 1..{n_filters}")
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(n_filters, size=count, replace=False))
    if ":" in text:
        start, _, stop = text.partition(":")
        lo, hi = _int(start or "0", spec), _int(stop or str(n_filters), spec)
        if hi <= lo:
            raise ConfigError(f"filters={spec} is an empty range: write start:stop with start < stop, e.g. 0:16")
        return _checked(list(range(lo, hi)), n_filters, layer)
    return _checked([_int(text, spec)], n_filters, layer)


def _int(text: str, spec: Any) -> int:
    try:
        return int(text)
    except ValueError:
        raise _malformed(spec) from None


def _malformed(spec: Any) -> ConfigError:
    return ConfigError(f"filters={spec!r} is not valid: use {FORMS}")


def _checked(indices: List[int], n_filters: int, layer: str) -> List[int]:
    bad = [i for i in indices if not 0 <= i < n_filters]
    if bad:
        raise ConfigError(
            f"filter {bad[0]} is out of range: {layer} has {n_filters} filters, 0..{n_filters - 1}"
        )
    if len(set(indices)) != len(indices):
        raise ConfigError(f"filters lists filter {_first_repeat(indices)} twice: give each filter once")
    return indices


def _first_repeat(indices: List[int]) -> int:
    seen = set()
    for i in indices:
        if i in seen:
            return i
        seen.add(i)
    raise AssertionError("no repeat")
