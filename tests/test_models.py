import keras
import numpy as np
import pytest

from filterviz.core.ascent import nothing_to_climb, visualize_filters
from filterviz.errors import ConfigError
from filterviz.core.models import channel_layer_names, check_input_size, conv_layer_names, conv_layers, cut_at, load_model


def test_cut_reports_the_layer_and_its_filters(vgg16):
    cut = cut_at(vgg16, "block2_conv1")
    assert (cut.layer, cut.n_filters, cut.channels) == ("block2_conv1", 128, 3)
    assert cut.extractor.compute_output_shape((1, 96, 96, 3)) == (1, 48, 48, 128)


@pytest.mark.parametrize("layer, says", [
    ("nope", "unknown layer 'nope' in vgg16: conv layers are block1_conv1, block1_conv2"),
    (None, "no layer given: pass layer=<name>"),
])
def test_bad_layers_list_the_valid_ones(vgg16, layer, says):
    with pytest.raises(ConfigError) as e:
        cut_at(vgg16, layer)
    assert says in str(e.value)


@pytest.mark.parametrize("layer, minimum", [("block1_conv1", 1), ("block3_conv1", 4), ("block5_conv1", 16)])
def test_input_size_minimum_is_found_and_said(vgg16, layer, minimum):
    cut = cut_at(vgg16, layer)
    check_input_size(cut, minimum)
    if minimum > 1:
        with pytest.raises(ConfigError, match=f"too small for layer {layer}: the minimum is {minimum}$"):
            check_input_size(cut, minimum - 1)


@pytest.mark.parametrize("name, layer", [("vgg19", "block5_conv4"), ("resnet50", "conv3_block1_1_conv")])
def test_other_applications_build_with_random_weights_and_ascend(name, layer):
    cut = cut_at(load_model(name, weights=None), layer)
    result = visualize_filters(cut.extractor, [0, 1], iters=4, step_size=1.0, input_size=32)
    assert result.images.shape == (2, 32, 32, 3)
    assert np.isfinite(result.images).all()
    alive = ~result.dead()  # random weights can leave a rectified filter dead
    assert alive.any() and (result.losses[alive, -1] > result.losses[alive, 0]).all(), "the ascent climbs"


def test_a_users_keras_file_model_with_one_channel(tmp_path):
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3, name="c1", activation="relu"),
                              keras.layers.MaxPooling2D(name="pool"), keras.layers.Conv2D(6, 3, name="c2")])
    path = tmp_path / "mine.keras"
    model.save(path)
    loaded = load_model("file", weights=None, path=str(path))
    assert conv_layer_names(loaded) == ["c1", "c2"]
    cut = cut_at(loaded, "c2")
    assert (cut.n_filters, cut.channels) == (6, 1)
    with pytest.raises(ConfigError, match="the minimum is 8"):
        check_input_size(cut, 7)
    result = visualize_filters(cut.extractor, [0, 5], iters=3, step_size=1.0, input_size=16)
    assert result.images.shape == (2, 16, 16, 1)


def test_missing_and_corrupt_weights_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found: .*missing.h5"):
        load_model("vgg16", weights=str(tmp_path / "missing.h5"))
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConfigError, match="could not load weights from .*corrupt.weights.h5 into vgg16: "):
        load_model("vgg16", weights=str(corrupt))


def mixed_model():
    """Every kind of layer with channels, random weights fixed by a seed."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(6, 3, name="separable")(x)
    x = keras.layers.Conv2DTranspose(5, 3, strides=2, name="transposed")(x)
    x = keras.layers.Dense(7, name="pointwise")(x)  # ConvNeXt's 1x1 convolutions are Dense on 4-D
    y = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.ReLU(name="relu")(x)
    return keras.Model(inputs, x, name="mixed")


CONVOLUTIONS = ["conv", "depthwise", "separable", "transposed", "pointwise"]


def test_every_convolution_kind_is_a_conv_layer_and_any_layer_with_channels_can_be_cut():
    model = mixed_model()
    assert conv_layer_names(model) == CONVOLUTIONS
    assert channel_layer_names(model) == [*CONVOLUTIONS, "bn", "add", "relu"]
    sizes = {layer.name: layer.filters for layer in conv_layers(model, 24)}
    assert sizes == {"conv": 4, "depthwise": 4, "separable": 6, "transposed": 5, "pointwise": 7}
    costs = [layer.cost for layer in conv_layers(model, 24)]
    assert costs == sorted(costs) and costs[0] == 22 * 22 * 3 * 3 * 3 * 4  # 22x22 outputs of a 3x3x3 kernel, 4 filters
    for name in channel_layer_names(model):
        cut = cut_at(model, name)
        assert cut.n_filters == int(model.get_layer(name).output.shape[-1])
        result = visualize_filters(cut.extractor, [0, cut.n_filters - 1], iters=4, step_size=1.0, input_size=24)
        assert (result.losses[:, -1] > result.losses[:, 0]).all(), name


def test_a_classifier_is_visualised_on_its_logits_not_its_softmax():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="classes")(x), name="classifier")
    cut = cut_at(model, "classes")
    assert (cut.n_filters, cut.channels) == (10, 1)
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    kernel, bias = model.get_layer("classes").get_weights()
    flat = keras.Model(model.inputs, model.get_layer("flat").output)(images).numpy()
    np.testing.assert_allclose(cut.extractor(images).numpy()[:, 0, 0, :], flat @ kernel + bias, rtol=1e-4, atol=1e-5)
    result = visualize_filters(cut.extractor, [1, 7], iters=4, step_size=1.0, input_size=16)
    assert result.images.shape == (2, 16, 16, 1) and (result.losses[:, -1] > result.losses[:, 0]).all()


def test_a_layer_without_channels_and_a_model_without_any_say_which_layers_qualify():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Reshape((36, 4), name="sequence")(x), name="seq")
    with pytest.raises(ConfigError, match=r"layer 'sequence' is a Reshape with output \(None, 36, 4\), no channel "
                                          r"axis: use one of conv$"):
        cut_at(model, "sequence")
    only = keras.Model(inputs, keras.layers.Reshape((64, 3), name="sequence")(inputs), name="nothing")
    with pytest.raises(ConfigError, match="nothing has no layer to visualise: no layer has a"):
        cut_at(only, "sequence")
    vector = keras.Input((10,))
    tabular = keras.Model(vector, keras.layers.Dense(4, name="dense")(vector), name="tabular")
    with pytest.raises(ConfigError, match=r"tabular takes inputs of shape \(None, 10\), not one image batch"):
        cut_at(tabular, "dense")


def test_a_linear_layers_negative_but_rising_activation_is_alive():
    rising_below_zero = np.array([[-5.0, -4.0, -3.0]])
    stuck_at_zero, stuck_below_zero, fired_once = np.zeros((1, 3)), np.full((1, 3), -2.0), np.array([[0, 0.5, 0.1]])
    curves = np.concatenate([rising_below_zero, stuck_at_zero, stuck_below_zero, fired_once])
    assert nothing_to_climb(curves).tolist() == [False, True, True, False]
    assert nothing_to_climb(np.array([[np.nan, np.nan], [-1.0, np.nan]])).tolist() == [True, True], "not run"


def test_model_preprocess_feeds_what_the_model_was_trained_on():
    from filterviz.core.models import preprocess_mode, preprocessor

    assert [preprocess_mode(m, None) for m in ("vgg16", "resnet50", "file")] == ["vgg16", "resnet50", "none"]
    assert preprocess_mode("file", "caffe") == "caffe" and preprocess_mode("file", "vgg19") == "vgg19"
    with pytest.raises(ConfigError, match="model.preprocess=bgr: use none, caffe, tf, torch or an application's name"):
        preprocess_mode("file", "bgr")
    images = np.random.default_rng(1).uniform(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(preprocessor("tf")(images), images * 2 - 1, atol=1e-6)
    torch = (images - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]  # ImageNet's statistics, as torchvision
    np.testing.assert_allclose(preprocessor("torch")(images), torch, atol=1e-5)
    caffe = images[..., ::-1] * 255 - [103.939, 116.779, 123.68]  # BGR, mean-subtracted
    np.testing.assert_allclose(preprocessor("caffe")(images), caffe, atol=1e-3)
    np.testing.assert_allclose(preprocessor("vgg16")(images), caffe, atol=1e-3)
    assert preprocessor("none") is None
    with pytest.raises(ConfigError, match="model.preprocess=caffe is for RGB images and this model takes 1 channel"):
        preprocessor("caffe", channels=1)


def test_every_keras_application_can_be_named():
    from filterviz.core.applications import APPLICATIONS, preprocess_input

    assert sorted(name for name, _ in APPLICATIONS.values()) == sorted(n for n in dir(keras.applications) if n[0].isupper())
    assert all(callable(preprocess_input(name)) for name in APPLICATIONS)


@pytest.mark.parametrize("name, layer", [
    ("mobilenetv2", "block_1_depthwise"), ("efficientnetb0", "block2a_dwconv"), ("xception", "block2_sepconv1"),
    ("convnexttiny", "convnext_tiny_stage_0_block_0_pointwise_conv_1"),  # ConvNeXt's 1x1 convolutions are Dense
])
def test_applications_of_every_convolution_kind_build_and_climb(name, layer):
    model = load_model(name, weights=None)
    assert layer in conv_layer_names(model)
    result = visualize_filters(cut_at(model, layer).extractor, [0, 1], iters=3, step_size=1.0, input_size=32)
    assert (result.losses[:, -1] > result.losses[:, 0]).all()


def test_an_application_with_its_top_is_visualised_on_its_class_logits():
    model = load_model("mobilenetv2", weights=None, include_top=True)
    cut = cut_at(model, "predictions")
    assert cut.n_filters == 1000
    with pytest.raises(ConfigError, match="this model takes 224x224 inputs: set input_size=224"):
        check_input_size(cut, 96)
    images = np.random.default_rng(0).uniform(-1, 1, size=(1, 224, 224, 3)).astype("float32")
    pooled = keras.Model(model.inputs, model.get_layer("predictions").input)(images).numpy()
    kernel, bias = model.get_layer("predictions").get_weights()
    logits = cut.extractor(images).numpy()[:, 0, 0]
    np.testing.assert_allclose(logits, pooled @ kernel + bias, rtol=1e-4, atol=1e-6)
    assert abs(model(images).numpy().sum() - 1) < 1e-4 and abs(logits.sum() - 1) > 1e-3, "logits, not probabilities"
