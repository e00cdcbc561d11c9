"""Numbers that say how good a filter's picture is, so presets are chosen by measurement.

final_activation  mean activation of the filter on the final image (what was maximised)
robustness        mean activation over 16 random views (jitter ±8 px, scale 0.9-1.1,
                  rotate ±10°) divided by the activation of the image itself: near 1 for
                  a picture of a feature, near 0 for one that games exact pixels
hf_fraction       share of the image's spectral energy above half the Nyquist frequency:
                  high for pixel noise, low for smooth pictures
dead              the filter never fired (`AscentResult.dead`, the one rule)

Activations are measured as the ascent measures them: the objective's `activation` term
(objectives.py) on the model's preprocessed input.
"""

from dataclasses import dataclass
from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from filterviz.core import objectives
from filterviz.core.ascent import AscentResult, Recipe
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

    PER_IMAGE = ("final_activation", "robustness", "hf_fraction")
    SUMMARY = ("quality/final_activation", "quality/robustness", "quality/hf_fraction", "quality/dead_filters")

    def per_image(self) -> Dict[str, np.ndarray]:
        return dict(zip(self.PER_IMAGE, (self.final_activation, self.robustness, self.hf_fraction)))

    def summary(self) -> Dict[str, float]:
        """Run-level figures: means over live filters (dead ones say nothing about the picture)."""
        live = ~self.dead
        pick = live if live.any() else np.ones_like(live)
        robust = self.robustness[pick]
        return dict(zip(self.SUMMARY, (
            float(np.mean(self.final_activation[pick])),
            float(np.nanmean(robust)) if np.isfinite(robust).any() else float("nan"),
            float(np.mean(self.hf_fraction[pick])),
            float(self.dead.sum()))))


def measure(extractor: keras.Model, result: AscentResult, recipe: Recipe, batch_size: int = 16) -> Quality:
    """Quality figures of the final images of `result`, made with `recipe`."""

    @tf.function(reduce_retracing=True)
    def activation(x, idx):
        x = recipe.preprocess(x) if recipe.preprocess else x
        acts = tf.cast(extractor(x, training=False), tf.float32)
        return objectives.activation(recipe.objective.context(acts, idx))

    plain, viewed = [], []
    for start in range(0, len(result.images), batch_size):
        x = tf.constant(result.images[start : start + batch_size], tf.float32)
        idx = tf.constant(result.filters[start : start + batch_size], tf.int32)
        plain.append(activation(x, idx).numpy())
        # Fixed seeds: every run is judged on the same views.
        seeds = tf.constant(image_seeds(0, "robustness", range(len(idx))), tf.int32)
        views = [activation(ROBUSTNESS_VIEWS(x, seeds, tf.constant(v, tf.int32)), idx).numpy() for v in range(VIEWS)]
        viewed.append(np.mean(views, axis=0))
    final, robust = np.concatenate(plain), np.concatenate(viewed)
    with np.errstate(divide="ignore", invalid="ignore"):
        robustness = np.where(final > 0, robust / final, np.nan)
    return Quality(final, robustness, hf_fraction(result.images), result.dead())
