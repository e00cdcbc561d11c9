"""`python -m filterviz.compare <parent run id | experiment> [--filter ...]`: runs side by side.

One figure: a row per run with its final images, labelled with the settings that differ
between the runs, and the runs' mean loss curves overlaid in the same colours. Saved to
the path it prints (the sweep's folder, else outputs/compare/<date>/<time>/), and logged to the
parent run (under compare/) when given one.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from filterviz.recording import tracking  # noqa: E402
from filterviz.recording.settings import is_setting  # noqa: E402
from filterviz.errors import ConfigError, first_line  # noqa: E402
from filterviz.recording.images import to_display  # noqa: E402

MAX_RUNS = 30


def differing_settings(runs: List[Run]) -> List[str]:
    """Settings whose values are not the same in every run."""
    keys = sorted({k for r in runs for k in r.data.params if is_setting(k)})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def label(run: Run, keys: List[str]) -> str:
    return ", ".join(f"{k}={run.data.params.get(k)}" for k in keys) or run.info.run_name


def find_runs(client: MlflowClient, target: str, where: Optional[str]):
    """(runs, parent run id or None) for a parent run id or an experiment name."""
    try:
        parent = client.get_run(target)
    except MlflowException:
        parent = None
    if parent is not None:
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{target}'" + (f" and {where}" if where else "")
        return _search(client, parent.info.experiment_id, query), target
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        raise ConfigError(f"{target!r} is neither a run id nor an experiment name in this store")
    runs = _search(client, experiment.experiment_id, where or "")
    return [r for r in runs if r.data.tags.get(tracking.SWEEP_TAG) != "parent"], None


def _search(client: MlflowClient, experiment_id: str, query: str) -> List[Run]:
    try:
        return client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
    except MlflowException as e:
        raise ConfigError(f"could not search runs with {query!r}: {first_line(e)}") from None


def load_results(client: MlflowClient, run: Run, folder: str) -> Dict[str, np.ndarray]:
    return {name: np.load(client.download_artifacts(run.info.run_id, f"{name}.npy", folder))
            for name in ("images", "filters", "losses")}


def draw(runs: List[Run], results: List[Dict[str, np.ndarray]], keys: List[str], max_images: int,
         title: str, path: Path) -> None:
    n = len(runs)
    cols = min(max_images, max(len(r["filters"]) for r in results))
    fig = plt.figure(figsize=(1.3 * cols + 6, max(3.0, 1.3 * n + 0.8)))
    grid = fig.add_gridspec(n, cols + 4, wspace=0.08, hspace=0.25)
    colours = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")(np.linspace(0, 1, n) if n > 20
                                                                                    else np.arange(n))
    curves = fig.add_subplot(grid[:, cols + 1 :])
    for row, (run, result, colour) in enumerate(zip(runs, results, colours)):
        text = label(run, keys)
        for col in range(cols):
            ax = fig.add_subplot(grid[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(result["filters"]):
                image = to_display(result["images"][col])
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"f{result['filters'][col]}", fontsize=7, pad=2)
            else:
                ax.axis("off")
            if col == 0:
                ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8, color=colour)
        curves.plot(result["losses"].mean(axis=0), color=colour, label=text, linewidth=1.5)
    curves.set_xlabel("iteration")
    curves.set_ylabel("mean objective over the run's filters")
    curves.yaxis.set_label_position("right")
    curves.yaxis.tick_right()
    curves.grid(alpha=0.3)
    if n <= 12:
        curves.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def default_out(parent: Optional[Run], target: str) -> Path:
    """Beside the results, not in the working directory: a sweep's own folder when it is here,
    else a new folder of outputs/compare/ like a run's (date/time)."""
    name = f"compare-{target[:12]}.png"
    sweep_dir = parent.data.tags.get("filterviz.sweep_dir") if parent else None
    if sweep_dir and Path(sweep_dir).is_dir():
        return Path(sweep_dir) / name
    return Path("outputs", "compare", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"), name)


def compare(target: str, where: Optional[str] = None, tracking_uri: Optional[str] = None,
            out: Optional[Path] = None, max_images: int = 8) -> Path:
    client = tracking.connect(tracking.resolve_store(tracking_uri, must_exist=True))
    runs, parent = find_runs(client, target, where)
    runs = [r for r in runs if r.info.status == "FINISHED"]
    if len(runs) < 2:
        raise ConfigError(f"found {len(runs)} finished run(s) for {target!r}; compare needs at least 2")
    if len(runs) > MAX_RUNS:
        print(f"note: {len(runs)} runs; showing the last {MAX_RUNS} (narrow them with --filter)", file=sys.stderr)
        runs = runs[-MAX_RUNS:]
    with tempfile.TemporaryDirectory() as tmp:
        results = [load_results(client, run, f"{tmp}/{i}") for i, run in enumerate(runs)]
    keys = differing_settings(runs)
    parent_run = client.get_run(parent) if parent else None
    out = out or default_out(parent_run, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = parent_run.info.run_name if parent_run else target
    draw(runs, results, keys, max_images, f"{title}: {len(runs)} runs", out)
    if parent:
        client.log_artifact(parent, str(out), "compare")
    return out


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filterviz.compare", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a sweep's parent run id, or an experiment name")
    parser.add_argument("--filter", help="an MLflow search filter, e.g. \"params.layer='block3_conv1'\"")
    parser.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    parser.add_argument("--out", type=Path, help="where to save the figure (default: the sweep's folder, else "
                        "outputs/compare/<date>/<time>/)")
    parser.add_argument("--max-images", type=int, default=8, help="images shown per run")
    args = parser.parse_args(argv)
    try:
        path = compare(args.target, args.filter, args.tracking_uri, args.out, args.max_images)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"comparison: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
