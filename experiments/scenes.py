"""Generated photographs for the dataset-examples demo, tests and benchmark: nothing downloaded.

Each scene is a sky-to-ground gradient with a few discs, bars and stripe patches of random
colours, sizes and orientations, at a random size and aspect. Deterministic in `seed`.

    python experiments/scenes.py <folder> [count]   # e.g. scenes 300
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def scene(rng: np.random.Generator) -> Image.Image:
    width, height = (int(v) for v in rng.integers(64, 200, size=2))
    top, bottom = rng.integers(0, 256, size=(2, 3))
    rows = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - rows) + bottom * rows) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(6, max(8, min(width, height) // 2)))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x - size, y - size, x + size, y + size], fill=colour)
        elif kind == 1:
            angle = rng.uniform(0, np.pi)
            dx, dy = size * np.cos(angle), size * np.sin(angle)
            draw.line([x - dx, y - dy, x + dx, y + dy], fill=colour, width=int(rng.integers(2, 8)))
        else:
            period = int(rng.integers(3, 9))
            for offset in range(-size, size, period):
                draw.line([x + offset, y - size, x + offset + size // 2, y + size], fill=colour, width=max(1, period // 2))
    return image


def make_scenes(folder: Path, count: int, seed: int = 0) -> list:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"scene{i:05d}.jpg"
        scene(rng).save(path, quality=90)
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python experiments/scenes.py <folder> [count]")
    made = make_scenes(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 300)
    print(f"{len(made)} scenes in {sys.argv[1]}")
