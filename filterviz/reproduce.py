"""`python -m filterviz.reproduce <run id>`: run a past run again and say if the images match.

Re-executes the run from what it logged (Hydra's overrides.yaml, in the directory it ran
from), records the new run in the same experiment tagged `reproduces=<run id>`, and compares
the final images bit for bit. Warns first when the code's commit or a library version
differs from the logged one. Exit code: 0 identical, 1 different or an error.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import numpy as np
from omegaconf import OmegaConf

from filterviz.recording import tracking
from filterviz.errors import ConfigError
from filterviz.recording.settings import is_setting, override_key

def replayed_overrides(logged: List[str]) -> List[str]:
    """The settings among a run's overrides: where the new run is recorded is reproduce's choice."""
    return [o for o in logged if is_setting(override_key(o))]


def changed_versions(logged_tags: dict, now: dict) -> List[str]:
    return [f"{key}: run had {logged_tags[key]}, now {value}"
            for key, value in now.items() if key in logged_tags and logged_tags[key] != value]


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filterviz.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    args = parser.parse_args(argv)
    try:
        return reproduce(args.run_id, args.tracking_uri)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def reproduce(run_id: str, tracking_uri: str = None) -> int:
    tracker, run = tracking.open_run(run_id, tracking_uri)
    experiment = tracker.client.get_experiment(run.info.experiment_id).name
    with tempfile.TemporaryDirectory() as tmp:
        try:
            logged = OmegaConf.to_container(
                OmegaConf.load(tracker.client.download_artifacts(run_id, ".hydra/overrides.yaml", tmp)))
        except Exception:
            raise ConfigError(f"run {run_id} has no .hydra/overrides.yaml artifact to replay") from None
        original = np.load(tracker.client.download_artifacts(run_id, "images.npy", tmp))

    for change in changed_versions(run.data.tags, tracking.code_versions()):
        print(f"warning: {change}; the images may differ", file=sys.stderr)

    cwd = run.data.tags.get("cwd")
    if not cwd or not Path(cwd).is_dir():
        cwd = None
    command = [sys.executable, "-m", "filterviz", *replayed_overrides(logged),
               f"tracking.uri={tracker.store.uri}", f"tracking.experiment={experiment}",
               f"+tracking.tags.reproduces={run_id}"]
    print("reproducing:", " ".join(command[1:]), f"(in {cwd or Path.cwd()})")
    if subprocess.run(command, cwd=cwd).returncode != 0:
        raise ConfigError(f"the rerun of {run_id} failed (see above)")

    [new] = tracker.client.search_runs([run.info.experiment_id], f"tags.reproduces = '{run_id}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
    with tempfile.TemporaryDirectory() as tmp:
        again = np.load(tracker.client.download_artifacts(new.info.run_id, "images.npy", tmp))
    if again.shape == original.shape and np.array_equal(again, original):
        print(f"identical: run {new.info.run_id} reproduces {run_id} bit for bit")
        return 0
    if again.shape != original.shape:
        print(f"different: images of shape {again.shape}, the run had {original.shape}")
    else:
        print(f"different: largest pixel difference {np.abs(again - original).max():.3g} "
              f"(run {new.info.run_id} vs {run_id})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
