import os
import signal

import numpy as np
import pytest

from conftest import WEIGHTS, needs_weights
from filterviz import stops
from filterviz.core.ascent import Ascent, chunks, visualize_filters
from filterviz.errors import Stopped
from filterviz.core.models import cut_at, load_model
from filterviz.core.notebook import notebook_visualize_filter


@pytest.fixture(scope="module")
def block3(vgg16):
    return cut_at(vgg16, "block3_conv1").extractor


def test_loss_rises_over_the_run(block3):
    result = visualize_filters(block3, [1, 2, 5, 9], iters=30, step_size=10.0, input_size=64)
    assert result.losses.shape == (4, 30)
    alive = result.losses[:, 0] > 0
    assert alive.any()
    assert (result.losses[alive, -1] > 2 * result.losses[alive, 0]).all()
    assert not np.allclose(result.images, 0.5), "the image must change from its flat start"


def test_single_filter_is_bit_identical_to_the_notebooks_loop(block3):
    expected_image, expected_losses = notebook_visualize_filter(block3, 5, iters=20, input_size=64)
    result = visualize_filters(block3, [5], iters=20, step_size=10.0, input_size=64, batch_size=1)
    np.testing.assert_array_equal(result.images[0], expected_image)
    np.testing.assert_array_equal(result.losses[0], expected_losses)


def test_a_filter_does_not_depend_on_its_batch_companions(block3):
    kwargs = dict(iters=25, step_size=10.0, input_size=64)
    alone = visualize_filters(block3, [7], batch_size=1, **kwargs)
    first = visualize_filters(block3, [7, 1, 2, 3], batch_size=4, **kwargs)
    last = visualize_filters(block3, [40, 41, 42, 7], batch_size=4, **kwargs)
    # Same batch shape: identical bits, wherever the filter sits and whoever shares the batch.
    np.testing.assert_array_equal(first.images[0], last.images[3])
    np.testing.assert_array_equal(first.losses[0], last.losses[3])
    # Another batch size is another grouped convolution of the layer (own_filter.py), so other kernels
    # and other rounding, which the seeds' ascent (l2-normalised steps of 10) amplifies: after 25
    # iterations the objective agrees to 0.1 % and the pixels to about 1 % of their spread.
    np.testing.assert_allclose(first.losses[0], alone.losses[0], rtol=2e-3)
    assert np.abs(first.images[0] - alone.images[0]).mean() < 0.05 * alone.images[0].std()


def test_large_filter_sets_run_in_chunks(block3):
    assert chunks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    seen = []
    result = visualize_filters(block3, list(range(5)), iters=3, step_size=10.0, input_size=32, batch_size=2,
                               on_step=lambda chunk, i, losses, activations: seen.append((tuple(chunk), i, len(losses))))
    assert result.images.shape == (5, 32, 32, 3) and result.losses.shape == (5, 3)
    assert [s for s in seen if s[1] == 0] == [((0, 1), 0, 2), ((2, 3), 0, 2), ((4,), 0, 1)]


@needs_weights
def test_bfloat16_precision_still_climbs_and_keeps_float32_images():
    extractor = cut_at(load_model("vgg16", str(WEIGHTS), precision="bfloat16"), "block3_conv1").extractor
    assert extractor.layers[-1].compute_dtype == "bfloat16"
    result = visualize_filters(extractor, [1, 2], iters=15, step_size=10.0, input_size=48)
    assert result.images.dtype == np.float32 and np.isfinite(result.images).all()
    assert (result.losses[:, -1] > 2 * result.losses[:, 0]).all()


def test_a_stop_signal_arriving_while_a_step_is_kept_waits_until_the_step_is_kept_whole(block3):
    """A stopped run's file and its streamed points must hold the same steps (test_live_runs)."""
    streamed = []

    def on_step(chunk, step, objective, activation):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # lands between the ascent keeping the step and the stream
        streamed.append(step)

    ascent = Ascent(block3, iters=10, step_size=10.0, input_size=32, on_step=on_step, guard=stops.deferred)
    with stops.stop_on_signals(), pytest.raises(Stopped, match="SIGTERM"):
        ascent.run([0])
    assert streamed == [0, 1, 2]
    assert np.isfinite(ascent.partial().activations[0]).sum() == 3
