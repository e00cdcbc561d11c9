"""Numbers that say how good a filter's picture is, so presets are chosen by measurement.

final_activation  mean activation of the filter on the final image (what was maximised)
robustness        mean activation over 16 random views (jitter ±8 px, scale 0.9-1.1,
                  rotate ±10°) divided by the activation of the image itself: near 1 for
                  a picture of a feature, near 0 for one that games exact pixels
hf_fraction       share of the image's spectral energy above half the Nyquist frequency:
                  high for pixel noise, low for smooth pictures
specificity       under the same 16 views, own / (own + rival): the filter's mean activation
                  against that of the strongest other filter of its layer, averaged over the
                  views: 0.5 a tie, near 1 a picture of that filter alone, near 0 a picture
                  of something else
peak_activation   the filter's largest activation anywhere on the final image: the measure its
                  dataset examples are ranked by (filterviz/core/exemplars.py), so the two compare
dead              the ascent found nothing to climb (`AscentResult.dead`, the one rule)

Activations are measured as the ascent measures them: the objective's `activation` term
(objectives.py) on the model's preprocessed input.

The first three are graded by the thing that was optimised; specificity asks a second,
independent question: is this a picture *of this filter*? The ascent only pushes its own
filter up; nothing in it rewards leaving the layer's other filters quiet. Why this form:
- a ratio of activations has no units, so raw and preprocessed inputs (activations orders
  of magnitude apart) and layers compare directly, and it lies in [0, 1] (positive parts:
  a silent own filter scores 0, a filter alone in firing 1);
- against the strongest rival, not a rank among all channels: the fraction of channels
  beaten was 1 for every live filter of both `best` and `seed` on block5_conv1, so it
  could not tell presets apart; the margin over the runner-up keeps that headroom;
- on the random views, not the exact pixels, so one lucky alignment does not earn it.
Raw channel means, not normalised per channel: a filter whose responses are typically
small is harder to make win, which is part of the question ("of which filter is this a
picture?"). More channels mean stronger rivals, so deep layers score somewhat lower.
Defined where the objective aims at the image's filter (`objectives.FILTER_TERMS`); NaN
for `layer` or `direction`.
"""

from dataclasses import dataclass
from typing import Dict, Optional

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
    specificity: np.ndarray
    dead: np.ndarray
    peak_activation: np.ndarray
    # peak_activation over that of the filter's best dataset example (exemplars.data=): below 1, a
    # photograph excites the filter more than its picture does, and the ascent fell short
    vs_examples: Optional[np.ndarray] = None

    PER_IMAGE = ("final_activation", "robustness", "hf_fraction", "specificity", "peak_activation")
    WITH_EXAMPLES = ("vs_examples",)
    SUMMARY = ("quality/final_activation", "quality/robustness", "quality/hf_fraction", "quality/specificity",
               "quality/dead_filters")

    def per_image(self) -> Dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (*self.PER_IMAGE, *self.WITH_EXAMPLES)
                if getattr(self, name) is not None}

    def summary(self) -> Dict[str, float]:
        """Run-level figures: means over live filters (dead ones say nothing about the picture)."""
        live = ~self.dead
        pick = live if live.any() else np.ones_like(live)
        return dict(zip(self.SUMMARY, (
            float(np.mean(self.final_activation[pick])),
            _nanmean(self.robustness[pick]),
            float(np.mean(self.hf_fraction[pick])),
            _nanmean(self.specificity[pick]),
            float(self.dead.sum()))))


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def measure(extractor: keras.Model, result: AscentResult, recipe: Recipe, batch_size: int = 16,
            views: int = VIEWS) -> Quality:
    """Quality figures of the final images of `result`, made with `recipe`, on `views` random views."""

    @tf.function(reduce_retracing=True, autograph=False)
    def activation(x, idx):
        """Per image: its filter's activation, and own / (own + strongest rival) of the layer."""
        x = recipe.preprocess(x) if recipe.preprocess else x
        context = recipe.objective.context(extractor(x, training=False), idx)
        means = tf.nn.relu(objectives.channel_means(context))  # the whole layer, already computed: ~free
        own = tf.gather(means, idx, axis=1, batch_dims=1)
        rival = tf.reduce_max(tf.where(tf.one_hot(idx, tf.shape(means)[1]) > 0, 0.0, means), axis=1)
        return (objectives.activation(context), tf.math.divide_no_nan(own, own + rival),
                tf.reduce_max(context.own_maps(), [1, 2]))

    plain, viewed, specific, peak = [], [], [], []
    for start in range(0, len(result.images), batch_size):
        x = tf.constant(result.images[start : start + batch_size], tf.float32)
        idx = tf.constant(result.filters[start : start + batch_size], tf.int32)
        final, _, highest = activation(x, idx)
        plain.append(final.numpy())
        peak.append(highest.numpy())
        # Fixed seeds: every run is judged on the same views.
        seeds = tf.constant(image_seeds(0, "robustness", range(len(idx))), tf.int32)
        judged = [activation(ROBUSTNESS_VIEWS(x, seeds, tf.constant(v, tf.int32)), idx) for v in range(views)]
        viewed.append(np.mean([a.numpy() for a, _, _ in judged], axis=0))
        specific.append(np.mean([s.numpy() for _, s, _ in judged], axis=0))
    final, robust = np.concatenate(plain), np.concatenate(viewed)
    with np.errstate(divide="ignore", invalid="ignore"):
        robustness = np.where(final > 0, robust / final, np.nan)
    aimed = any(recipe.objective.uses(term) for term in objectives.FILTER_TERMS)
    specificity = np.concatenate(specific) if aimed else np.full(len(final), np.nan)
    return Quality(final, robustness, hf_fraction(result.images), specificity, result.dead(), np.concatenate(peak))
