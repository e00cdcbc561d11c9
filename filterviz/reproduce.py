"""`python -m filterviz.reproduce <run id>`: run a past run again and say if the images match.

Rebuilds the run from its complete logged config (`config_resolved.yaml`: every resolved
value, so today's defaults do not matter), runs it in the directory it ran from, records the
new run in the same experiment tagged `reproduces=<run id>` with the verdict, and compares the
final images bit for bit. Warns first when the code's commit or a library version differs
from the logged one, and still runs. Exit code: 0 identical, 1 different or an error.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import numpy as np
import yaml
from mlflow.entities import Run

from filterviz.errors import ConfigError
from filterviz.recording import provenance, tracking

CONFIG_ARTIFACT = "config_resolved.yaml"


def replay_config(recorded: dict, uri: str, experiment: str, run_id: str) -> dict:
    """The recorded settings as a whole primary config: every value given, none from conf/."""
    settings = {k: v for k, v in recorded.items() if k != "tracking"}
    record_to = {"enabled": True, "uri": uri, "experiment": experiment, "tags": {"reproduces": run_id}}
    return {"defaults": ["filterviz_schema", "_self_"], **settings, "tracking": record_to,
            "hydra": {"job": {"name": "filterviz"}}}


def changed_versions(logged_tags: dict, now: dict) -> List[str]:
    return [f"{key}: run had {logged_tags[key]}, now {value}"
            for key, value in now.items() if key in logged_tags and logged_tags[key] != value]


def _saved_model(client, run: Run, path: str, tmp: str) -> str:
    """The network a run was made of, when its file is gone: the copy the run logged (an
    in-memory model from the Python API is saved with the results, filterviz/api.py), or the one
    its atlas logged once for all its jobs (filterviz/atlas/build.py)."""
    parent = run.data.tags.get("mlflow.parentRunId")
    for holder in [run.info.run_id, *([parent] if parent else [])]:
        try:
            return client.download_artifacts(holder, Path(path).name, tmp)
        except Exception:
            continue
    raise ConfigError(f"run {run.info.run_id}'s model file {path} is gone and the run holds no copy of it")


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
    client = tracker.client
    experiment = client.get_experiment(run.info.experiment_id).name
    with tempfile.TemporaryDirectory() as tmp:
        try:
            recorded = yaml.safe_load(Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text())
            original = np.load(client.download_artifacts(run_id, "images.npy", tmp))
        except Exception:
            raise ConfigError(f"run {run_id} has no {CONFIG_ARTIFACT} and images.npy to reproduce from") from None
        model = recorded.get("model", {})
        if model.get("name") == "file" and model.get("path") and not Path(model["path"]).is_file():
            model["path"] = _saved_model(client, run, model["path"], tmp)
        for change in changed_versions(run.data.tags, provenance.code_versions()):
            print(f"warning: {change}; the images may differ", file=sys.stderr)
        (Path(tmp) / "replay.yaml").write_text(
            yaml.safe_dump(replay_config(recorded, tracker.store.uri, experiment, run_id), sort_keys=False))
        cwd = run.data.tags.get("cwd")
        cwd = cwd if cwd and Path(cwd).is_dir() else None  # relative paths in the config are relative to it
        print(f"reproducing {run.info.run_name} ({run_id}) from its recorded config, in {cwd or Path.cwd()}")
        command = [sys.executable, "-m", "filterviz", "--config-dir", tmp, "--config-name", "replay"]
        if subprocess.run(command, cwd=cwd).returncode != 0:
            raise ConfigError(f"the rerun of {run_id} failed (see above)")

    [new] = client.search_runs([run.info.experiment_id], f"tags.reproduces = '{run_id}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    with tempfile.TemporaryDirectory() as tmp:
        again = np.load(client.download_artifacts(new.info.run_id, "images.npy", tmp))
    same_shape = again.shape == original.shape
    difference = float(np.abs(again - original).max()) if same_shape else float("inf")
    identical = same_shape and np.array_equal(again, original)
    client.set_tag(new.info.run_id, "mlflow.runName", f"reproduces {run.info.run_name}")
    client.set_tag(new.info.run_id, "reproduce.verdict", "identical" if identical else "different")
    client.set_tag(new.info.run_id, "reproduce.max_pixel_difference", f"{difference:.3g}")
    if identical:
        print(f"identical: run {new.info.run_id} reproduces {run_id} bit for bit")
        return 0
    if not same_shape:
        print(f"different: images of shape {again.shape}, the run had {original.shape}")
    else:
        print(f"different: largest pixel difference {difference:.3g} (run {new.info.run_id} vs {run_id})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
