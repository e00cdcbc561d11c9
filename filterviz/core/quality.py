"""Numbers that say how good a filter's picture is, so presets are chosen by measurement.

final_activation  mean activation of the filter on the final image (what was maximised)
robustness        mean activation over 16 random views (jitter ±8 px, scale 0.9-1.1,
                  rotate ±10°) divided by the activation of the image itself: near 1 for
                  a picture of a feature, near 0 for one that games exact pixels
hf_fraction       share of the image's spectral energy above half the Nyquist frequency:
                  high for pixel noise, low for smooth pictures
dead              the filter never fired: its activation stayed at zero throughout
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from filterviz.core.transforms import Transforms, image_seeds

VIEWS = 16
ROBUSTNESS_VIEWS = Transforms(jitter=8, scale=[0.9, 1.1], rotate=10.0)


def hf_fraction(images: np.ndarray) -> np.ndarray:
    """Per image: spectral energy at |f| > 0.25 cycles/pixel over all energy (mean removed)."""
    x = images - images.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2  # (n, h, w, c)
    fy = np.fft.fftfreq(x.shape[1])[:, None]
    fx = np.fft.fftfreq(x.shape[2])[None, :]
    high = (np.sqrt(fx**2 + fy**2) > 0.25)[None, :, :, None]
    total = power.sum(axis=(1, 2, 3))
    return np.where(total > 0, (power * high).sum(axis=(1, 2, 3)) / np.maximum(total, 1e-30), 0.0)


@dataclass
class Quality:
    final_activation: np.ndarray
    robustness: np.ndarray
    hf_fraction: np.ndarray
    dead: np.ndarray

    def per_image(self) -> Dict[str, np.ndarray]:
        return {"activation": self.final_activation, "robustness": self.robustness, "hf_fraction": self.hf_fraction}

    def summary(self) -> Dict[str, float]:
        """Run-level figures: means over live filters (dead ones say nothing about the picture)."""
        live = ~self.dead
        pick = live if live.any() else np.ones_like(live)
        return {
            "quality/final_activation": float(np.mean(self.final_activation[pick])),
            "quality/robustness": float(np.nanmean(self.robustness[pick])) if np.isfinite(
                self.robustness[pick]).any() else float("nan"),
            "quality/hf_fraction": float(np.mean(self.hf_fraction[pick])),
            "quality/dead_filters": float(self.dead.sum()),
        }


def measure(extractor: keras.Model, images: np.ndarray, filters: Sequence[int], losses: np.ndarray,
            preprocess: Optional[Callable] = None, batch_size: int = 16) -> Quality:
    """Quality figures of final `images` (in the space the ascent fed the model before preprocessing)."""

    @tf.function(reduce_retracing=True)
    def activation(x, idx):
        x = preprocess(x) if preprocess else x
        acts = tf.cast(extractor(x, training=False), tf.float32)
        return tf.reduce_mean(tf.gather(acts, idx, axis=3, batch_dims=1), axis=[1, 2])

    plain, viewed = [], []
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start : start + batch_size], tf.float32)
        idx = tf.constant(filters[start : start + batch_size], tf.int32)
        plain.append(activation(x, idx).numpy())
        # Fixed seeds: every run is judged on the same views.
        seeds = tf.constant(image_seeds(0, "robustness", range(len(idx))), tf.int32)
        views = [activation(ROBUSTNESS_VIEWS(x, seeds, tf.constant(v, tf.int32)), idx).numpy() for v in range(VIEWS)]
        viewed.append(np.mean(views, axis=0))
    final, robust = np.concatenate(plain), np.concatenate(viewed)
    with np.errstate(divide="ignore", invalid="ignore"):
        robustness = np.where(final > 0, robust / final, np.nan)
    dead = (final <= 0) & (losses.max(axis=1) <= 0)  # never fired, and the image is still silent
    return Quality(final, robustness, hf_fraction(images), dead)
