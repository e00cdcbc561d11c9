"""The atlas as a static web site that opens from disk (file://, no server, no network).

    site_dir/atlas.json            the manifest, as given (NaN written as null)
    site_dir/index.html            one row per layer: counts, mean figures, a strip of pictures
    site_dir/layers/<layer>.html   every filter's picture (beside its dataset examples, if any);
                                   sorting and each filter's detail in JS, from the layer's data
                                   embedded once as JSON
    site_dir/examples/<layer>/     the dataset examples' strips (exemplars.data=), as the pass wrote them
    site_dir/atlas.css, atlas.js

Pictures stay where the atlas wrote them: the pages refer to them by relative paths.
"""

import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Iterable, Optional

import jinja2

ASSETS = ("atlas.css", "atlas.js")
THUMBNAILS = 12  # pictures per layer on the index
CURVE_DIGITS = 4  # significant digits of the curves embedded in a layer page: enough for a plot


def write_site(manifest: dict, site_dir: Path) -> Path:
    """Write the site for `manifest` into `site_dir` and return the path of its index.html.

    Called again as an atlas fills in: every file is rewritten, each one atomically.
    """
    manifest = without_nan(manifest)
    site_dir = Path(site_dir)
    (site_dir / "layers").mkdir(parents=True, exist_ok=True)
    figures = sorted(manifest["figures"].items())
    layers = [layer_view(layer, page, [name for name, _ in figures])
              for layer, page in zip(manifest["layers"], page_names(layer["name"] for layer in manifest["layers"]))]
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["figure"] = format_figure

    write_atomically(site_dir / "atlas.json", json.dumps(manifest, indent=1, allow_nan=False))
    for asset in ASSETS:
        write_atomically(site_dir / asset, (resources.files(__package__) / "static" / asset).read_text())
    for layer in layers:
        write_atomically(site_dir / "layers" / layer["page"],
                         env.get_template("layer.html").render(atlas=manifest, figures=figures, layer=layer))
    index = site_dir / "index.html"
    write_atomically(index, env.get_template("index.html").render(atlas=manifest, figures=figures, layers=layers))
    return index


def page_names(layer_names: Iterable[str]) -> list[str]:
    """`<layer>.html` per layer, of letters, digits, `_` and `-` only (any other run of characters
    becomes `_`), unique even on a case-insensitive file system."""
    taken, names = set(), []
    for name in layer_names:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "layer"
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.lower())
        names.append(f"{candidate}.html")
    return names


def layer_view(layer: dict, page: str, figure_names: list[str]) -> dict:
    """What the templates show of a layer: its counts, mean figures and the data its page embeds."""
    filters = layer["filters"]
    live = [f for f in filters if not f["dead"]]
    return {
        **layer,
        "page": page,
        "dead": sum(f["dead"] for f in filters),
        "means": {name: mean_of(f["figures"].get(name) for f in live) for name in figure_names},
        "thumbnails": filters[:THUMBNAILS],
        "data": {
            "layer": layer["name"],
            "figures": figure_names,
            "examples": any(f.get("examples") for f in filters),
            "filters": [{"filter": f["filter"], "dead": f["dead"], "figures": f["figures"], "examples": f.get("examples"),
                         "curve": [None if v is None else float(f"{v:.{CURVE_DIGITS}g}") for v in f["curve"]],
                         "run_url": f.get("run_url"), "command": f["command"]} for f in filters],
        },
    }


def mean_of(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return fmean(known) if known else None


def format_figure(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3g}"


def without_nan(value):
    """`value` with every NaN or infinity replaced by None: JSON has no NaN, and browsers refuse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return value


def write_atomically(path: Path, text: str) -> None:
    """Via a temporary file, so that a browser reloading while the atlas runs never reads half a page."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
