"""Image parameterizations (config group `param`): what the optimiser changes, and how it
becomes an RGB image.

pixel    the pixels themselves (the seeds': a flat 0.5 start, unbounded values)
fourier  a spectrum scaled by 1/f^decay, inverse-FFT'd, colour-decorrelated and squashed
         into [0, 1] by a sigmoid or clipping (Olah et al., Distill 2017)

A parameterization is a dataclass with three methods, named by `_target_` in a YAML file
of conf/param/: `init(seeds, size, channels)` -> the starting parameters of one image per
seed, `to_image(params)` -> (n, size, size, channels) images (differentiable), and
`livelier()` -> a copy whose random start gives a dead filter something to climb.
"""

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import tensorflow as tf

# Square root of the ImageNet colour covariance (lucid's), normalised by its largest column norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
IMAGENET_MEAN = np.array([0.48, 0.46, 0.41], np.float32)


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


@dataclass
class Fourier:
    decay: float = 1.0  # spectrum scaled by 1 / f^decay
    decorrelate: bool = True  # optimise in a decorrelated colour space
    squash: str = "sigmoid"  # sigmoid | clip
    std: float = 0.01  # of the random initial spectrum

    def init(self, seeds: Sequence[int], size: int, channels: int) -> tf.Tensor:
        self.size, self.channels = size, channels
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        self._scale = tf.constant(size / np.maximum(freqs, 1.0 / size) ** self.decay, tf.complex64)
        # real and imaginary parts of (channels, size, size//2+1) per image
        return per_image_normal(seeds, (2, channels, size, size // 2 + 1), self.std)

    def livelier(self) -> "Fourier":
        """A stronger random spectrum, for filters a near-grey image gives nothing to climb."""
        return replace(self, std=max(0.5, 2 * self.std))

    def to_image(self, params: tf.Tensor) -> tf.Tensor:
        spectrum = tf.complex(params[:, 0], params[:, 1]) * self._scale
        image = tf.signal.irfft2d(spectrum, fft_length=[self.size, self.size]) / 4.0
        image = tf.transpose(image, [0, 2, 3, 1])  # (n, size, size, channels)
        if self.decorrelate and self.channels == 3:
            image = tf.einsum("nhwc,dc->nhwd", image, tf.constant(COLOR_CORRELATION))
        if self.squash == "sigmoid":
            return tf.sigmoid(image)
        mean = tf.constant(IMAGENET_MEAN if self.channels == 3 else [0.45], tf.float32)
        return tf.clip_by_value(image + mean, 0.0, 1.0)
