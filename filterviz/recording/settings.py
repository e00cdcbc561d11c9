"""Which config keys are settings, the ones that make the picture, and which only say where a
run is recorded or how it is launched. One list, one meaning: run names, params and
comparisons show settings only, and a reproduction replays settings only."""

import os
from typing import Dict, List, Mapping, Optional, Sequence

NOT_SETTINGS = ("tracking", "hydra", "atlas", "exemplars")  # exemplars: examples beside, not in, the pictures
# Config keys that change no picture: what to report, and a default already resolved into `layer`.
NOT_PICTURE = ("optimized_metric", "save_gif", "gif_filter", "model.default_layer")


def is_setting(key: str) -> bool:
    key = key.lstrip("+~")
    return not any(key == group or key.startswith((f"{group}.", f"{group}/")) for group in NOT_SETTINGS)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def picture_params(flat: Mapping[str, str]) -> Dict[str, str]:
    """A run's MLflow params: the settings that make the picture, without unset (None) values. A
    group that builds a class is one param, `param=Fourier(decay=1.0, std=0.01)`: few enough
    params that the UI's image cards, which caption each picture with them all, show the picture."""
    kept = {k: v for k, v in flat.items()
            if is_setting(k) and k not in NOT_PICTURE and v != "None" and not k.endswith("._partial_")}
    groups = [k[: -len("._target_")] for k in kept if k.endswith("._target_")]
    params = {}
    for key, value in kept.items():
        group = next((g for g in groups if key.startswith(f"{g}.")), None)
        if group is None:
            params[key] = value
        elif key == f"{group}._target_":
            values = ", ".join(f"{k[len(group) + 1:]}={v}" for k, v in kept.items()
                               if k.startswith(f"{group}.") and k != key)
            params[group] = f"{value.rsplit('.', 1)[-1]}({values})"
    return params


def run_name(overrides: List[str], only_keys: Optional[List[str]] = None,
             leading: Sequence[str] = ()) -> Optional[str]:
    """`filters=0:16 layer=block3_conv1` from a job's overrides (sorted, like Hydra's override_dirname),
    settings only, leaving out the `leading` keys; a file path shows as its file name."""
    kept = []
    for override in sorted(overrides):
        key = override_key(override)
        if is_setting(key) and key not in leading and (only_keys is None or key in only_keys):
            value = override.split("=", 1)[1] if "=" in override else ""
            kept.append(f"{key}={os.path.basename(value)}" if os.sep in value else override.lstrip("+"))
    return " ".join(kept) or None


def filter_span(filters: Sequence[int]) -> str:
    """`f3`, `f0-15`, `f1,5,9` or `512 filters`: which filters, in a few characters."""
    if len(filters) == 1:
        return f"f{filters[0]}"
    if list(filters) == list(range(filters[0], filters[0] + len(filters))):
        return f"f{filters[0]}-{filters[-1]}"
    return "f" + ",".join(map(str, filters)) if len(filters) <= 4 else f"{len(filters)} filters"


LEADING = ("model", "model.path", "layer", "filters")


def model_label(name: str, path: Optional[str]) -> str:
    """`vgg16`, or a saved model's file name without its extension (model=file)."""
    return name if name != "file" else os.path.splitext(os.path.basename(path))[0]


def describe(model: str, layer: str, filters: Sequence[int], overrides: List[str]) -> str:
    """A run's name: what matters first (model, layer, filters), then the other settings given,
    e.g. `vgg16 block3_conv1 f0-15 · iters=40 step_size=5`."""
    lead = f"{model} {layer} {filter_span(filters)}"
    rest = run_name(overrides, leading=LEADING)
    return f"{lead} · {rest}" if rest else lead
