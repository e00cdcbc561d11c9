"""The preset study's verdict (experiments/presets.py) decides the default, so "ties" must mean
the difference is within the pictures' noise, and a dead filter must not count as a picture."""

import numpy as np

from experiments.presets import paired_verdict, per_picture


def test_the_verdict_compares_picture_by_picture():
    rng = np.random.default_rng(1)
    theirs = {f"block3_conv1/f{i:04d}": v for i, v in enumerate(rng.uniform(0.2, 0.8, 48))}
    noise = dict(zip(theirs, rng.normal(0, 0.05, 48)))
    # A small but steady edge wins even though the pictures spread far more than it
    assert paired_verdict({k: v + 0.02 for k, v in theirs.items()}, theirs)[0] == "wins"
    assert paired_verdict({k: v - 0.02 for k, v in theirs.items()}, theirs)[0] == "loses"
    verdict, low, high = paired_verdict({k: v + noise[k] - np.mean(list(noise.values())) for k, v in theirs.items()},
                                        theirs)
    assert verdict == "ties" and low < 0 < high


def test_a_dead_filter_is_no_picture_and_the_score_is_per_picture():
    figures = {"seconds": 3.0, "quality/specificity": 0.5, "quality/dead_filters": 1.0,
               "final_activation/block1_conv2/f0000": 12.0, "final_activation/block1_conv2/f0001": 0.0,
               "robustness/block1_conv2/f0000": 0.8, "robustness/block1_conv2/f0001": float("nan"),
               "hf_fraction/block1_conv2/f0000": 0.25, "hf_fraction/block1_conv2/f0001": 0.0,
               "specificity/block1_conv2/f0000": 0.6, "specificity/block1_conv2/f0001": 0.0}
    found = per_picture(figures, dead=np.array([False, True]))
    assert found["specificity"] == {"block1_conv2/f0000": 0.6}
    assert found["score"] == {"block1_conv2/f0000": 0.8 * 0.75}
