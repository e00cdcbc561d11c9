"""Image parameterizations (config group `param`): what the optimiser changes, and how it
becomes an RGB image.

pixel    the pixels themselves (the seeds': a flat 0.5 start, unbounded values)
fourier  a spectrum scaled by 1/f^decay, inverse-FFT'd, colour-decorrelated and squashed
         into [0, 1] by a sigmoid or clipping (Olah et al., Distill 2017); it starts from a
         random spectrum (lucid's) or from a natural photograph's, with a random phase
maco     only the spectrum's phase; its magnitude is fixed to natural photographs' (Fel et
         al., NeurIPS 2023), and the ascent keeps an attribution map

A parameterization is a dataclass with three methods, named by `_target_` in a YAML file
of conf/param/: `init(seeds, size, channels)` -> the starting parameters of one image per
seed, `to_image(params)` -> (n, size, size, channels) images (differentiable), and
`livelier()` -> a copy whose random start gives a dead filter something to climb. A class
attribute `wants_attribution = True` asks the ascent to accumulate |d objective / d image|.
"""

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import tensorflow as tf

from filterviz.errors import ConfigError

# Square root of the ImageNet colour covariance (lucid's), normalised by its largest column norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
IMAGENET_MEAN = np.array([0.48, 0.46, 0.41], np.float32)
# Mean magnitude spectrum of natural photographs, (3, 256, 129) in rfft2 layout, in the
# decorrelated colour space; made by experiments/maco_spectrum.py.
MACO_SPECTRUM = Path(__file__).parent / "data" / "maco_spectrum.npy"


def per_image_normal(seeds: Sequence[int], shape: Sequence[int], stddev: float) -> tf.Tensor:
    """One stateless normal draw per image: an image's start depends on its own seed only."""
    return tf.stack([tf.random.stateless_normal(shape, seed=[int(s), 0], stddev=stddev) for s in seeds])


@dataclass
class Pixel:
    init_value: float = 0.5
    noise: float = 0.0  # std of seeded noise around init_value; 0 = the seeds' flat start

    def init(self, seeds: Sequence[int], size: int, channels: int) -> tf.Tensor:
        flat = tf.fill((len(seeds), size, size, channels), tf.constant(self.init_value, tf.float32))
        if self.noise == 0:
            return flat
        return flat + per_image_normal(seeds, (size, size, channels), self.noise)

    def to_image(self, params: tf.Tensor) -> tf.Tensor:
        return params

    def livelier(self) -> "Pixel":
        """A noisier start, for filters a flat image gives nothing to climb."""
        return replace(self, noise=max(0.1, 2 * self.noise))


class Start(str, Enum):
    random = "random"  # a normal random spectrum of std `std` (lucid's)
    natural = "natural"  # natural photographs' magnitude spectrum (MaCo's) with a random phase

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass
class Fourier:
    decay: float = 1.0  # spectrum scaled by 1 / f^decay
    decorrelate: bool = True  # optimise in a decorrelated colour space
    squash: str = "sigmoid"  # sigmoid | clip
    start: Start = Start.random
    std: float = 0.01  # of the random initial spectrum (start=random)

    def init(self, seeds: Sequence[int], size: int, channels: int) -> tf.Tensor:
        self.size, self.channels = size, channels
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        scale = size / np.maximum(freqs, 1.0 / size) ** self.decay
        self._scale = tf.constant(scale, tf.complex64)
        if self.start == Start.natural:
            # the parameters whose picture is MaCo's start: to_image multiplies by the scale and divides by 4
            magnitude = (natural_magnitude(size, channels, "param.start=natural") * 4.0 / scale).astype(np.float32)
            phase = _hermitian_edges(random_phase(seeds, size, channels), lambda a, mirror: (a - mirror) / 2)
            return tf.stack([magnitude * tf.cos(phase), magnitude * tf.sin(phase)], axis=1)
        # real and imaginary parts of (channels, size, size//2+1) per image
        return per_image_normal(seeds, (2, channels, size, size // 2 + 1), self.std)

    def livelier(self) -> "Fourier":
        """A stronger random spectrum, for filters a near-grey image gives nothing to climb; from a
        natural start, another one (a retry's phase comes from its own seeds)."""
        return replace(self) if self.start == Start.natural else replace(self, std=max(0.5, 2 * self.std))

    def spectrum(self, params: tf.Tensor) -> tf.Tensor:
        """The picture's (n, channels, size, size//2+1) spectrum, Hermitian where a real picture's is
        (the first and, at an even size, the last column): there a CPU's inverse FFT reads only the
        Hermitian part of what it is given, and cuFFT's assumes it, so an unconstrained random start
        would give another picture on a GPU. Symmetrised, both compute the same one."""
        real = _hermitian_edges(params[:, 0], lambda a, mirror: (a + mirror) / 2)
        imaginary = _hermitian_edges(params[:, 1], lambda a, mirror: (a - mirror) / 2)
        return tf.complex(real, imaginary) * self._scale

    def to_image(self, params: tf.Tensor) -> tf.Tensor:
        image = tf.signal.irfft2d(self.spectrum(params), fft_length=[self.size, self.size]) / 4.0
        image = tf.transpose(image, [0, 2, 3, 1])  # (n, size, size, channels)
        if self.decorrelate and self.channels == 3:
            image = tf.einsum("nhwc,dc->nhwd", image, tf.constant(COLOR_CORRELATION))
        if self.squash == "sigmoid":
            return tf.sigmoid(image)
        mean = tf.constant(IMAGENET_MEAN if self.channels == 3 else [0.45], tf.float32)
        return tf.clip_by_value(image + mean, 0.0, 1.0)


@dataclass
class Maco:
    """MaCo (Fel et al., "Unlocking Feature Visualization for Deeper Networks with MAgnitude
    Constrained Optimization", NeurIPS 2023): the parameters are the phase of the picture's
    spectrum; its magnitude is the natural-image spectrum (MACO_SPECTRUM), interpolated to the
    image size, so whatever the ascent does the picture keeps the spectrum of a photograph
    instead of drifting into saturated high-frequency noise."""

    wants_attribution: ClassVar[bool] = True

    def init(self, seeds: Sequence[int], size: int, channels: int) -> tf.Tensor:
        self.size, self.channels = size, channels
        self.magnitude = tf.constant(natural_magnitude(size, channels, "param=maco"), tf.float32)
        return random_phase(seeds, size, channels)

    def livelier(self) -> "Maco":
        """The same: a MaCo start is never flat, and a retry draws its new phase from its own stream."""
        return replace(self)

    def to_image(self, params: tf.Tensor) -> tf.Tensor:
        phase = _hermitian_edges(params, lambda a, mirror: (a - mirror) / 2)
        spectrum = tf.complex(self.magnitude * tf.cos(phase), self.magnitude * tf.sin(phase))
        image = tf.transpose(tf.signal.irfft2d(spectrum, fft_length=[self.size, self.size]), [0, 2, 3, 1])
        if self.channels == 3:
            image = tf.einsum("nhwc,dc->nhwd", image, tf.constant(COLOR_CORRELATION))
        return tf.sigmoid(image)


def natural_magnitude(size: int, channels: int, setting: str) -> np.ndarray:
    """The natural-image magnitude spectrum (MACO_SPECTRUM) at `size`, (channels, size, size//2+1) in
    rfft2 layout, with mean 0 (a sigmoid then centres the picture on grey) and scaled so that a
    picture with it has unit standard deviation, whatever its phase."""
    if channels not in (1, 3):
        raise ConfigError(f"{setting}: the natural-image spectrum is for 1 or 3 channels; this model takes {channels}: "
                          "use param.start=random (a 1/f spectrum per channel) or param=pixel")
    magnitude = resample_spectrum(np.load(MACO_SPECTRUM), size)[:channels]  # decorrelated channel 0: luminance
    magnitude[:, 0, 0] = 0.0
    magnitude = _hermitian_edges(magnitude, lambda a, mirror: (a + mirror) / 2)
    # Parseval: with the magnitude fixed the picture's energy is too, whatever the phase, so one
    # constant gives it unit standard deviation.
    weight = np.full(magnitude.shape[-1], 2.0)
    weight[0] = weight[-1 if size % 2 == 0 else 0] = 1.0  # columns stored once in rfft layout
    energy = (magnitude**2 * weight).sum() / (channels * size**4)
    return (magnitude / np.sqrt(energy)).astype(np.float32)


def random_phase(seeds: Sequence[int], size: int, channels: int) -> tf.Tensor:
    """(n, channels, size, size//2+1): one uniform phase per image, from its own seed."""
    return tf.stack([tf.random.stateless_uniform((channels, size, size // 2 + 1), seed=[int(s), 0],
                                                 minval=-np.pi, maxval=np.pi) for s in seeds])


def _hermitian_edges(a, combine):
    """`a` (..., rows, columns) in rfft2 layout with the first and (even size) last columns
    replaced by `combine(a, a at the negated row frequency)`. Those columns hold the spectrum's
    real axis, where a real image's spectrum is Hermitian: magnitudes symmetric, phases
    antisymmetric. Made so, the inverse FFT keeps every magnitude exactly (otherwise it would
    average each such bin with its mirror's)."""
    size = a.shape[-2]
    edges = np.zeros(a.shape[-1], bool)
    edges[0] = edges[-1 if size % 2 == 0 else 0] = True
    if isinstance(a, np.ndarray):
        mirror = np.roll(a[..., ::-1, :], 1, axis=-2)
        return np.where(edges, combine(a, mirror), a)
    mirror = tf.roll(tf.reverse(a, axis=[-2]), 1, axis=-2)
    return tf.where(tf.constant(edges), combine(a, mirror), a)


def resample_spectrum(magnitude: np.ndarray, size: int) -> np.ndarray:
    """A (channels, n, n//2+1) rfft2-layout magnitude at another image size: linear in frequency
    (cycles per pixel), so a smaller picture gets the same spectral shape as the reference, on its
    own coarser frequency grid (beyond the reference's highest frequency, its value)."""
    n = magnitude.shape[-2]
    rows = np.fft.fftshift(magnitude, axes=-2)  # rows by increasing frequency, -0.5 ... 0.5
    rows = np.apply_along_axis(lambda line: np.interp(np.fft.fftfreq(size), np.fft.fftshift(np.fft.fftfreq(n)), line),
                               -2, rows)
    return np.apply_along_axis(lambda line: np.interp(np.fft.rfftfreq(size), np.fft.rfftfreq(n), line), -1, rows)
