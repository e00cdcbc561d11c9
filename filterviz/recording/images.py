"""Turn raw ascent results into pictures: per-filter PNGs, a grid and the loss curves; for maco,
the picture with its attribution map as transparency."""

import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402


def wrap(title: str, width: int = 70) -> str:
    """A figure title over lines of `width` characters: a run's name can be long."""
    return "\n".join(textwrap.wrap(title, width)) or title


def to_display(image: np.ndarray) -> np.ndarray:
    """Min-max scale one image to 0..1, as the notebooks do; a flat image becomes mid-grey."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.full_like(image, 0.5, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def save_png(image: np.ndarray, path: Path) -> None:
    shown = to_display(image)
    plt.imsave(path, shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)


def with_attribution(image: np.ndarray, attribution: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """The display-scaled image as RGBA uint8, opaque where the objective's gradient was large (MaCo's
    transparency map). Alpha: the attribution's channel mean, blurred (the gradient is pixel speckle;
    the map is to say which regions mattered), over its `percentile` and at most 1 (a few hot pixels
    would otherwise leave the rest invisible)."""
    rgb = to_display(image)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
    strength = blur(attribution.mean(axis=-1), sigma=image.shape[0] / 48)
    top = float(np.percentile(strength, percentile))
    alpha = np.clip(strength / top, 0.0, 1.0) if top > 0 else np.ones_like(strength)
    return (np.concatenate([rgb, alpha[..., None]], axis=-1) * 255).round().astype(np.uint8)


def blur(plane: np.ndarray, sigma: float) -> np.ndarray:
    """A 2-D array Gaussian-blurred, edges reflected."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(plane, [(radius, radius) if d == axis else (0, 0) for d in range(2)], mode="reflect")
        plane = sliding_window_view(padded, len(kernel), axis=axis) @ kernel
    return plane


def save_attribution_png(image: np.ndarray, attribution: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(with_attribution(image, attribution), "RGBA").save(path)


def mosaic(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Tile display-scaled images in a near-square grid with white gaps."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, c), np.float32)
    for k, image in enumerate(images):
        r, q = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = to_display(image)
    return out


def save_grid(images: np.ndarray, filters: Sequence, title: str, path: Path) -> None:
    """One figure of every filter's image, each labelled with its filter index."""
    n, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tile = min(1.6, 24 / cols)  # inches per image: readable for a few, bounded for hundreds
    fig, ax = plt.subplots(figsize=(max(cols * tile, 3.0), rows * tile + 0.5))  # room for the title
    grid = mosaic(images)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    for k, f in enumerate(filters):
        r, q = divmod(k, cols)
        ax.text(q * (w + 2) + 2, r * (h + 2) + 2, str(f), color="white", fontsize=max(5, 2 * tile + 4),
                va="top", ha="left", bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
    ax.set_title(wrap(title), fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    # zlib's fastest level: half the time of the default for a 64-picture grid (0.64 -> 0.35 s), 8 % larger
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(fig)


def save_loss_curves(losses: np.ndarray, filters: Sequence, title: str, path: Path) -> None:
    """Each filter's objective per iteration, and their mean in black."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.arange(losses.shape[1])
    few = len(filters) <= 10
    for f, curve in zip(filters, losses):
        ax.plot(steps, curve, linewidth=1.2 if few else 0.6, alpha=0.9 if few else 0.4,
                label=f"filter {f}" if few else None)
    if len(filters) > 1:
        ax.plot(steps, losses.mean(axis=0), color="black", linewidth=2, label="mean")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (what the ascent maximises)")
    ax.set_title(wrap(title), fontsize=9)
    if few or len(filters) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_gif(frames: Sequence[np.ndarray], path: Path, side: int = 192, ms_per_frame: int = 80) -> None:
    """The ascent of one image as an animated GIF, each frame scaled like the final PNG."""
    from PIL import Image

    repeat = max(1, side // frames[0].shape[0])
    pictures = []
    for frame in frames:
        shown = (to_display(frame) * 255).round().astype(np.uint8)
        shown = shown.repeat(repeat, axis=0).repeat(repeat, axis=1)
        pictures.append(Image.fromarray(shown[..., 0] if shown.shape[-1] == 1 else shown))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=ms_per_frame, loop=0)
