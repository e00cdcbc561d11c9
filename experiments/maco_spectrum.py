"""The natural-image magnitude spectrum that `param=maco` fixes: filterviz/core/data/maco_spectrum.npy.

MaCo (Fel et al., NeurIPS 2023) optimises only the Fourier phase of the picture; its magnitude
is the mean spectrum of natural photographs. The paper averages ImageNet; we cannot ship
ImageNet, so this averages the colour photographs that scikit-image ships inside its wheel
(`skimage.data`: astronaut, chelsea, coffee, rocket and the left view of stereo_motorcycle;
the other colour samples are microscopy, a retina, a telescope field and a colour wheel, not
scenes). Each photo (300 to 741 pixels a side) gives nine REFERENCE-pixel crops at its own
resolution, on a 3 x 3 grid from corner to corner (overlapping), each also mirrored
left-right (natural statistics are mirror symmetric, a handful of photos are not): 90 views.
Crops, not resized photos: resizing low-pass filters, and steepened the high-frequency end of
the spectrum (amplitude slope -1.6 instead of -1.3 above 0.25 cycles/pixel); at native
resolution the amplitude falls as one power law, about 1/f^1.3, from 0.01 to 0.45 cycles/pixel.

Per view: pixels in [0, 1], mean colour removed, into the decorrelated colour space that
`Maco.to_image` recorrelates from (the inverse of params.COLOR_CORRELATION: the generated
channels are independent, so the colour correlations of photos have to come from the
recorrelation), a Hann window (a crop is not periodic: the jump at its border would add a
cross of energy on the axes, which the periodic generated pictures would show as horizontal
and vertical streaks), then |rfft2| per channel. The views are averaged in the log domain (a
geometric mean): each photo counts the same whatever its contrast, and one photo's strong
lines (the rocket's gantry) do not dominate the mean of so few. The DC term is set to 0: the
picture's mean is the squash's (grey), not the photos'. The overall scale does not matter;
`Maco` normalises the picture's contrast.

Saved as float32 (channels, REFERENCE, REFERENCE // 2 + 1), the layout of `np.fft.rfft2` over
the last two axes. To regenerate (needs scikit-image, the `maco-spectrum` extra):

    python -m pip install -e ".[maco-spectrum]"
    python experiments/maco_spectrum.py
"""

import argparse
from pathlib import Path

import numpy as np

from filterviz.core.params import COLOR_CORRELATION, MACO_SPECTRUM

REFERENCE = 256  # pixels: above the usual input sizes, so a run's spectrum is interpolated, not extrapolated
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")


def photos():
    from skimage import data

    for name in PHOTOS:
        photo = getattr(data, name)()
        yield name, photo[0] if name == "stereo_motorcycle" else photo  # (left, right, disparity)


def views(photo: np.ndarray, size: int):
    """`size`-pixel crops on a 3 x 3 grid from corner to corner, in [0, 1], and their mirrors."""
    h, w, _ = photo.shape
    for i in range(3):
        for j in range(3):
            y, x = (h - size) * i // 2, (w - size) * j // 2
            view = photo[y : y + size, x : x + size] / 255.0
            yield view
            yield view[:, ::-1]


def spectrum(size: int = REFERENCE) -> np.ndarray:
    decorrelate = np.linalg.inv(COLOR_CORRELATION)
    window = np.outer(np.hanning(size), np.hanning(size))[None]
    logs = []
    for _, photo in photos():
        for view in views(photo, size):
            channels = np.moveaxis((view - view.mean(axis=(0, 1))) @ decorrelate.T, -1, 0)  # (3, size, size)
            logs.append(np.log(np.abs(np.fft.rfft2(channels * window)) + 1e-12))
    magnitude = np.exp(np.mean(logs, axis=0))
    magnitude[:, 0, 0] = 0.0
    return magnitude.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=REFERENCE, help="reference side in pixels")
    parser.add_argument("--out", type=Path, default=MACO_SPECTRUM)
    args = parser.parse_args()
    magnitude = spectrum(args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, magnitude)
    print(f"{args.out}: {magnitude.shape} from {len(PHOTOS)} photos, {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
