import keras
import numpy as np
import pytest

from filterviz.core.ascent import visualize_filters
from filterviz.errors import ConfigError
from filterviz.core.models import check_input_size, conv_layer_names, cut_at, load_model


def test_cut_reports_the_layer_and_its_filters(vgg16):
    cut = cut_at(vgg16, "block2_conv1")
    assert (cut.layer, cut.n_filters, cut.channels) == ("block2_conv1", 128, 3)
    assert cut.extractor.compute_output_shape((1, 96, 96, 3)) == (1, 48, 48, 128)


@pytest.mark.parametrize("layer, says", [
    ("nope", "unknown layer 'nope' in vgg16: conv layers are block1_conv1, block1_conv2"),
    ("block1_pool", "'block1_pool' is a MaxPooling2D, not a convolution: use one of block1_conv1"),
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
    assert (result.losses[:, -1] > result.losses[:, 0]).all(), "the ascent climbs the filter's activation"


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
