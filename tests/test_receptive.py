"""The receptive field filterviz computes from a model's layers is where the unit's gradient lives."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from filterviz.core.receptive import receptive_field
from filterviz.errors import ConfigError


def linear_network():
    """Strided, padded ("same" pads one side more on an odd length), dilated, depthwise, separable and
    residual, with no ReLU or max pooling: every pixel a unit sees has a nonzero gradient."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="strided")(inputs)
    x = keras.layers.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, dilation_rate=2, name="dilated")(x)
    branch = keras.layers.Conv2D(4, 3, padding="same", name="branch")(x)
    x = keras.layers.Add(name="residual")([x, branch])
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.AveragePooling2D(2, name="pool")(x)
    # equal strides: under op determinism (on once any run has run in the process) TensorFlow's depthwise
    # kernel refuses unequal ones
    x = keras.layers.SeparableConv2D(5, (3, 1), strides=2, padding="same", name="separable")(x)
    x = keras.layers.Dense(6, name="pointwise")(x)
    return keras.Model(inputs, x)


def support(model, layer, size, y, x):
    """(top, left, bottom, right) of the input pixels with a nonzero gradient of unit (y, x, 0); None
    for a unit that sees none (one of padding)."""
    cut = keras.Model(model.inputs, model.get_layer(layer).output)
    image = tf.Variable(np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        unit = cut(image)[0, y, x, 0]
    nonzero = np.abs(tape.gradient(unit, image).numpy()[0]).sum(axis=-1) > 0
    rows, cols = np.flatnonzero(nonzero.any(axis=1)), np.flatnonzero(nonzero.any(axis=0))
    return (rows[0], cols[0], rows[-1], cols[-1]) if len(rows) else None


@pytest.mark.parametrize("size", [24, 25])
def test_the_field_of_every_layer_is_the_gradients_support(size):
    model = linear_network()
    for layer in ["strided", "pad", "dilated", "residual", "bn", "pool", "separable", "pointwise"]:
        field = receptive_field(model, layer, size)
        rows, cols = keras.Model(model.inputs, model.get_layer(layer).output)(np.zeros((1, size, size, 3))).shape[1:3]
        assert (field.rows.length, field.cols.length) == (rows, cols), layer
        for y, x in {(0, 0), (rows // 2, cols // 2), (rows - 1, cols - 1), (0, cols - 1), (1, 2)}:
            seen = support(model, layer, size, y, x)
            assert field.seen(y, x, size) == seen, (layer, y, x)
            if seen is not None:  # the field as cropped holds it
                top, left, bottom, right = field.box(y, x, size)
                assert top <= seen[0] and left <= seen[1] and bottom >= seen[2] and right >= seen[3], (layer, y, x)
    # 3 (strided), + 4 steps of 2 (dilated), + 2 steps of 2 (the residual's wider branch)
    assert receptive_field(model, "residual", size).size == (3 + 2 * 4 + 2 * 2,) * 2


def test_max_pooling_transposed_and_upsampled_fields_hold_the_gradients_support():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.MaxPooling2D(2, name="maxpool")(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="transposed")(x)
    x = keras.layers.UpSampling2D(2, name="up")(x)
    x = keras.layers.Conv2D(3, 3, name="after")(x)
    model = keras.Model(inputs, x)
    size = 20
    for layer in ["maxpool", "transposed", "up", "after"]:
        field = receptive_field(model, layer, size)
        for y, x in [(0, 0), (3, 5), (field.rows.length - 1, field.cols.length - 1)]:
            top, left, bottom, right = field.seen(y, x, size)
            t, l, b, r = support(model, layer, size, y, x)  # max pooling: one pixel of each window
            assert top <= t and left <= l and bottom >= b and right >= r, (layer, y, x)


def test_a_dense_units_field_is_the_whole_picture_and_an_unknown_geometry_is_one_line():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x)))
    assert receptive_field(model, "logits", 16).box(0, 0, 16) == (0, 0, 15, 15)
    resized = keras.Model(inputs, keras.layers.Resizing(8, 8, name="resize")(inputs))
    with pytest.raises(ConfigError, match="cannot follow the receptive field through layer 'resize' "
                                          r"\(Resizing\): it changes the picture's geometry"):
        receptive_field(resized, "resize", 16)
