"""Which config keys are settings, the ones that make the picture, and which only say where a
run is recorded or how it is launched. One list, one meaning: run names and comparisons show
settings only, and a reproduction replays settings only."""

import os
from typing import List, Optional

NOT_SETTINGS = ("tracking", "hydra")


def is_setting(key: str) -> bool:
    key = key.lstrip("+~")
    return not any(key == group or key.startswith((f"{group}.", f"{group}/")) for group in NOT_SETTINGS)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_name(overrides: List[str], only_keys: Optional[List[str]] = None) -> Optional[str]:
    """`filters=0:16,layer=block3_conv1` from a job's overrides (sorted, like Hydra's override_dirname);
    a file path shows as its file name."""
    kept = []
    for override in sorted(overrides):
        key = override_key(override)
        if is_setting(key) and (only_keys is None or key in only_keys):
            value = override.split("=", 1)[1] if "=" in override else ""
            kept.append(f"{key}={os.path.basename(value)}" if os.sep in value else override.lstrip("+"))
    return ",".join(kept) or None
