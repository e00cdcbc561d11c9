"""An atlas in MLflow: one parent run per atlas (found again by its identity, so a rerun resumes
it), a child run per job, and the page's data gathered back from the children's artifacts."""

import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from mlflow.entities import Run, RunStatus

from filterviz.core.quality import Quality
from filterviz.recording.owners import owner_tags
from filterviz.recording.tracking import SWEEP_TAG, Tracker

ATLAS_TAG = "filterviz.atlas"  # the atlas's identity, on its parent run
FIGURES = {
    "final_activation": "the filter's mean activation on its picture (higher: stronger)",
    "robustness": "activation under 16 random small shifts, scalings and rotations over that on the picture "
                  "(near 1: a picture of a feature; near 0: one that games exact pixels)",
    "hf_fraction": "share of the picture's spectral energy at high frequencies (lower: smoother)",
    "specificity": "on 16 random views of its picture, the filter's activation over its own plus the strongest other "
                   "filter's of the layer (0.5: a tie; near 1: a picture of this filter alone)",
    "peak_activation": "the filter's largest activation anywhere on its picture (what dataset examples are ranked by)",
}
VS_EXAMPLES = {"vs_examples": "peak activation on the picture over that on the filter's best dataset example (below "
                              "1: a photograph beats the picture, and the ascent fell short)"}


def open_parent(tracker: Tracker, atlas_id: str, name: str, params: Mapping[str, str],
                tags: Mapping[str, str]) -> Tuple[str, bool]:
    """(parent run id, resumed): the atlas's parent run, started again if an earlier command made it."""
    client = tracker.client
    found = client.search_runs([tracker.experiment_id], f"tags.`{ATLAS_TAG}` = '{atlas_id}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, RunStatus.to_string(RunStatus.RUNNING))
        for key, value in {**tags, **owner_tags()}.items():
            client.set_tag(run_id, key, value)
        if "error" in found[0].data.tags:
            client.delete_tag(run_id, "error")
        return run_id, True
    tags = {**tags, **owner_tags(), SWEEP_TAG: "atlas", ATLAS_TAG: atlas_id}
    run_id = client.create_run(tracker.experiment_id, run_name=name, tags=tags).info.run_id
    tracker.log_params(run_id, params)
    return run_id, False


def done_filters(runs: Sequence[Run]) -> Dict[str, Set[int]]:
    """Per layer, the filters finished jobs hold."""
    done: Dict[str, Set[int]] = {}
    for run in runs:
        layer, filters = run.data.tags.get("filterviz.layer"), run.data.tags.get("filterviz.filters")
        if layer and filters:
            done.setdefault(layer, set()).update(map(int, filters.split(",")))
    return done


def gather(tracker: Tracker, runs: Sequence[Run], site_dir: Path, base_command: Sequence[str],
           layer_sizes: Mapping[str, int]) -> List[dict]:
    """The page's layers: every filter of the finished jobs, its picture copied under
    site_dir/pictures/<layer>/, its curve, figures, run and the command that redoes just it."""
    by_layer: Dict[str, List[dict]] = {name: [] for name in layer_sizes}
    for run in runs:
        layer = run.data.tags.get("filterviz.layer")
        if layer not in by_layer:
            continue
        run_id = run.info.run_id
        folder = site_dir / "pictures" / layer
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            table = json.loads(Path(tracker.client.download_artifacts(run_id, "filters.json", tmp)).read_text())
            curves = np.load(tracker.client.download_artifacts(run_id, "activations.npy", tmp))
            pictures = Path(tracker.client.download_artifacts(run_id, "pictures", tmp))
            by_layer[layer] += _filters(table, curves, pictures, folder, layer, run_id, tracker.run_url(run_id),
                                        base_command)
    shown = {name: sorted((f for f in by_layer[name] if f["filter"] < size), key=lambda f: f["filter"])
             for name, size in layer_sizes.items()}  # an earlier command may have done more (atlas.per_layer)
    return [{"name": name, "n_filters": size, "done": len(shown[name]), "filters": shown[name]}
            for name, size in layer_sizes.items()]


def _filters(table: dict, curves: np.ndarray, pictures: Path, folder: Path, layer: str, run_id: str, url: str,
             base_command: Sequence[str]) -> List[dict]:
    """One job's filters as the page shows them, their pictures moved into `folder`."""
    found = []
    for row, curve in zip((dict(zip(table["columns"], r)) for r in table["data"]), curves):
        if row["copy"]:
            continue  # one picture per filter on the page
        picture = Path(row["picture"]).name
        shutil.move(pictures / picture, folder / picture)
        found.append({
            "filter": row["filter"], "picture": f"pictures/{layer}/{picture}", "dead": row["dead"],
            # .get: a resumed atlas's older jobs may predate a figure
            "figures": {k: _number(row.get(k)) for k in Quality.PER_IMAGE},
            "curve": [_number(v) for v in curve], "run_id": run_id, "run_url": url,
            "command": shlex.join(["python", "-m", "filterviz", *base_command, f"layer={layer}",
                                   f"filters={row['filter']}"])})
    return found


def _number(value) -> Optional[float]:
    if value is None:  # NaN, as log_table writes it
        return None
    value = float(value)
    return value if np.isfinite(value) else None
