"""The ascent computes the cut layer for each image's own filter alone: the same maps, less work."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from filterviz.core import own_filter
from filterviz.core.ascent import Ascent, Recipe
from filterviz.core.models import cut_at
from filterviz.core.objectives import Objective
from filterviz.core.optimizers import L2Step
from filterviz.core.params import Fourier


def model(last: keras.layers.Layer, policy: str = "float32") -> keras.Model:
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(3)
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu", name="first")(inputs)
        return keras.Model(inputs, last(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("last", [
    dict(padding="same"), dict(padding="valid", strides=2), dict(padding="same", dilation_rate=2),
    dict(padding="valid", activation="linear", use_bias=False)])
def test_each_images_own_filter_is_the_whole_layers_channel_bit_for_bit(policy, last):
    net = model(keras.layers.Conv2D(6, 3, **{"activation": "relu", **last}, name="last"), policy)
    split = own_filter.split(net)
    images = tf.random.stateless_uniform((5, 21, 19, 3), seed=[1, 2])
    filters = tf.constant([4, 0, 5, 4, 2])
    whole = net(images).numpy()
    own = split(images, filters).numpy()
    np.testing.assert_array_equal(own, whole[np.arange(5), ..., filters.numpy()])


def test_only_a_plain_convolution_the_objective_reads_one_filter_of_is_split(vgg16):
    assert own_filter.split(model(keras.layers.DepthwiseConv2D(3))) is None
    assert own_filter.split(model(keras.layers.Conv2D(6, 3, groups=2))) is None
    assert own_filter.split(cut_at(vgg16, "block1_pool").extractor) is None
    assert own_filter.split(cut_at(vgg16, "block1_conv2").extractor) is not None
    assert Objective("channel - 0.1 * l2").own_filter_only and Objective("neuron + tv").own_filter_only
    assert not Objective("channel + 0.5 * diversity", copies=2).own_filter_only
    assert not Objective("layer").own_filter_only and not Objective("direction").own_filter_only


def test_the_ascent_on_the_own_filter_climbs_the_objective_of_the_whole_layer():
    net = model(keras.layers.Conv2D(6, 3, activation="relu", name="last"))
    recipe = Recipe(param=Fourier(), optimizer=L2Step, objective=Objective("channel - 0.1 * tv", border=1))
    run = lambda iters: Ascent(net, recipe, iters=iters, step_size=0.5, input_size=24, batch_size=3).run([1, 4, 5])  # noqa: E731
    climbed, one_step = run(4), run(1)
    # The objective the ascent saw at its second step, and the whole layer's on the picture it saw.
    whole = recipe.objective.context(net(one_step.images), tf.constant([1, 4, 5]), tf.constant(one_step.images))
    np.testing.assert_allclose(climbed.losses[:, 1], recipe.objective(whole).numpy(), rtol=1e-5)
    alive = climbed.activations[:, 0] > 0  # a random network's filters can be dead
    assert alive.any() and (climbed.activations[alive, -1] > climbed.activations[alive, 0]).all()
