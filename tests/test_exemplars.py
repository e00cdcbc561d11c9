"""Dataset examples: the top images per channel, merged batch by batch and shard by shard."""

import keras
import numpy as np
import pytest
from PIL import Image

from filterviz.core.exemplars import (EMPTY, Maxima, TopK, dataset, image_files, map_maxima, quantile_picks, scan,
                                      spatial_maxima)
from filterviz.errors import ConfigError


def brute_force(activations: np.ndarray, k: int):
    """Per channel, (value, image, y, x) of the k largest spatial maxima, ties to the smaller image."""
    n, h, w, c = activations.shape
    flat = activations.reshape(n, h * w, c)
    best, where = flat.max(axis=1), flat.argmax(axis=1)
    top = []
    for channel in range(c):
        ranked = sorted(range(n), key=lambda i: (-best[i, channel], i))[:k]
        top.append([(best[i, channel], i, where[i, channel] // w, where[i, channel] % w) for i in ranked])
    return top


def as_rows(found: TopK):
    return [list(zip(found.values[c], found.images[c], found.ys[c], found.xs[c])) for c in range(found.values.shape[0])]


def test_batch_by_batch_and_shard_by_shard_the_top_k_is_the_brute_force_one():
    rng = np.random.default_rng(0)
    activations = rng.integers(0, 6, size=(37, 3, 4, 5)).astype(np.float32)  # few values: many ties
    k = 4
    whole = None
    for start in range(0, 37, 5):  # uneven batches
        batch = TopK.of_batch(activations[start:start + 5], np.arange(start, min(start + 5, 37)), k)
        whole = batch if whole is None else whole.merge(batch)
    assert as_rows(whole) == brute_force(activations, k)
    # shards in any order, merged in any order: the same arrays
    shards = [np.arange(37)[i::3] for i in range(3)]
    parts = [TopK.of_batch(activations[s], s, k) for s in shards]
    for merged in (parts[2].merge(parts[0]).merge(parts[1]), parts[0].merge(parts[1].merge(parts[2]))):
        for name, array in merged.arrays().items():
            np.testing.assert_array_equal(array, whole.arrays()[name], err_msg=name)
    # fewer images than k: the empty slots stay empty, after the images
    few = TopK.of_batch(activations[:2], np.array([7, 3]), k)
    assert (few.images[:, 2:] == EMPTY).all() and np.isinf(few.values[:, 2:]).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_graphs_maxima_are_the_first_in_row_major_order_whatever_the_ties(dtype):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    activations = rng.integers(0, 3, size=(16, 7, 9, 6)).astype(np.float32)  # ties within rows and across them
    activations[:, :, :, 0] = 0  # a dead channel: every position ties
    expected_best, expected_where = spatial_maxima(activations)
    unsized = tf.function(map_maxima, input_signature=[tf.TensorSpec((None, None, None, 6), dtype)])
    for maxima in (map_maxima, unsized):  # a map of known size (pools), of unknown size (one argmax)
        best, where = maxima(tf.constant(activations, dtype))
        np.testing.assert_array_equal(best.numpy(), expected_best)
        np.testing.assert_array_equal(where.numpy(), expected_where)


def test_a_quantile_is_the_image_at_its_rank_whatever_the_shards_and_keeps_large_activations(tmp_path):
    """Rank ceil(q * n) from the bottom, ties by image number: with 10 images, 90 % is the 9th (in
    floating point 0.9 * 10 is 9.000000000000002); values past float16's range kept as they are."""
    rng = np.random.default_rng(1)
    values = rng.permutation(10).astype(np.float32)[:, None] * 1e5  # image i has value values[i]
    where = np.arange(10, dtype=np.int64)[:, None]
    (tmp_path / "whole").mkdir()
    whole = Maxima(tmp_path / "whole", "layer", 1, 0, 10)
    whole.write(np.arange(10), values, where)
    parts = []
    for start, stop in ((0, 4), (4, 10)):
        (tmp_path / f"{start}").mkdir()
        part = Maxima(tmp_path / f"{start}", "layer", 1, start, stop)
        part.write(np.arange(start, stop), values[start:stop], where[start:stop])
        parts.append((part, np.ones(stop - start, bool)))
    rising = np.argsort(values[:, 0], kind="stable")
    for found in (quantile_picks([(whole, np.ones(10, bool))], [0.9, 0.5, 0.1], 5), quantile_picks(parts, [0.9, 0.5, 0.1], 5)):
        for q, rank in ((0.9, 9), (0.5, 5), (0.1, 1)):
            assert found[q].images[0, 0] == rising[rank - 1] and found[q].values[0, 0] == values[rising[rank - 1], 0]
            assert divmod(int(rising[rank - 1]), 5) == (found[q].ys[0, 0], found[q].xs[0, 0])


def small_net():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    flat = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="units")(flat))


def test_one_pass_over_a_folder_finds_each_channels_top_images_and_skips_what_it_cannot_read(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(9):  # colour, grey, with alpha, 16-bit; odd sizes
        size = (20 + 3 * i, 17 + i)
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        if i % 4 == 0:
            Image.fromarray(pixels).save(tmp_path / f"rgb{i}.jpg")
        elif i % 4 == 1:
            Image.fromarray(pixels[..., 0]).save(tmp_path / f"grey{i}.png")
        elif i % 4 == 2:
            Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(tmp_path / f"alpha{i}.png")
        else:
            Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / f"deep{i}.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("not an image")
    files = image_files(tmp_path)
    assert len(files) == 10 and files[-1].name == "broken.png"

    model = small_net()
    layers = ["conv", "depthwise", "units"]
    seen = []
    found = scan(model, layers, dataset(files, range(len(files)), 24, 3, batch=4), k=3,
                 after_batch=lambda found, numbers, _: seen.extend(numbers.tolist()))
    assert seen == list(range(9)), "every readable image once, the broken one skipped"
    images = np.concatenate([batch for batch, _ in dataset(files[:9], range(9), 24, 3, batch=9)])
    for layer in layers:
        expected = keras.Model(model.inputs, model.get_layer(layer).output)(images).numpy()
        expected = expected.reshape(9, 1, 1, -1) if expected.ndim == 2 else expected
        got = as_rows(found[layer])
        for channel, rows in enumerate(brute_force(expected, 3)):
            assert [r[1:] for r in got[channel]] == [r[1:] for r in rows], (layer, channel)
            np.testing.assert_allclose([r[0] for r in got[channel]], [r[0] for r in rows], rtol=1e-5)


def test_a_missing_or_empty_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        image_files(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no pictures")
    with pytest.raises(ConfigError, match=r"no images there \(.jpg"):
        image_files(tmp_path)


def test_a_top_examples_crop_is_its_units_receptive_field_and_holds_all_it_sees():
    from filterviz.core.exemplars import field_crops
    from filterviz.core.receptive import receptive_field

    model, size = small_net(), 24
    images = np.random.default_rng(2).uniform(size=(6, size, size, 3)).astype(np.float32)
    cut = keras.Model(model.inputs, model.get_layer("depthwise").output)
    activations = cut(images).numpy()
    found = TopK.of_batch(activations, np.arange(6), k=2)
    field = receptive_field(model, "depthwise", size)
    assert field.size[0] == field.size[1]
    boxes = np.array([field.box(found.ys[c, 0], found.xs[c, 0], size) for c in range(4)])
    pieces = field_crops(images, boxes, found.images[:, 0], size, field.size[0], fill=-1.0)
    for channel, ((top, left, bottom, right), piece) in enumerate(zip(boxes, pieces)):
        image, y, x = found.images[channel, 0], found.ys[channel, 0], found.xs[channel, 0]
        # at the input's own size and the field's, the crop is the field's pixels, and past the edge the fill
        padded = np.pad(images[image], ((size, size), (size, size), (0, 0)), constant_values=-1.0)
        np.testing.assert_allclose(piece, padded[top + size:bottom + size + 1, left + size:right + size + 1], atol=1e-6)
        # everything outside the crop changed, the unit's activation not at all: it sees only the crop
        other = np.random.default_rng(3).uniform(size=images[image].shape).astype(np.float32)
        inside = np.zeros(images[image].shape[:2], bool)
        inside[max(top, 0):bottom + 1, max(left, 0):right + 1] = True
        mixed = np.where(inside[..., None], images[image], other)
        np.testing.assert_allclose(cut(mixed[None]).numpy()[0, y, x, channel], found.values[channel, 0], rtol=1e-5)
        assert cut(other[None]).numpy()[0, y, x, channel] != pytest.approx(found.values[channel, 0])
    # at twice the input's size, the same field: its pixels at twice the resolution
    doubled = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    twice = field_crops(doubled, boxes, found.images[:, 0], size, 2 * field.size[0], fill=-1.0)
    np.testing.assert_allclose(twice[:, ::2, ::2], pieces, atol=1e-5)
