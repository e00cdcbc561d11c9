"""The techniques: parameterizations, transforms, objectives, optimizers, quality, dead filters, presets."""

from dataclasses import replace
from functools import partial

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_module

from conftest import WEIGHTS, needs_weights
from filterviz.core import objectives
from filterviz.core.ascent import ImageId, Recipe, concatenate, retry_dead, visualize_filters
from filterviz.config import register_configs
from filterviz.errors import ConfigError
from filterviz.core.models import cut_at, preprocessor
from filterviz.core.params import COLOR_CORRELATION, IMAGENET_MEAN, MACO_SPECTRUM, Fourier, Maco, resample_spectrum
from filterviz.core.quality import hf_fraction, measure
from filterviz.core.transforms import Transforms, image_seeds
from filterviz.recording.images import with_attribution

LUCID = dict(param=Fourier(), transforms=Transforms(pad=12, jitter=8, scale=[0.9, 1.1], rotate=10.0,
                                                     jitter_after=4),
             optimizer=partial(keras.optimizers.Adam, epsilon=1e-8))


@pytest.mark.parametrize("options, grow", [
    (dict(pad=5), 10), (dict(jitter=8), 0), (dict(scale=[0.8, 1.2]), 0), (dict(rotate=30.0), 0),
    (dict(blur=1.5), 0), (dict(jitter_after=4), 0),
    (dict(pad=12, jitter=8, scale=[0.9, 1.1], rotate=10.0, jitter_after=4, blur=0.5), 24),
])
def test_each_transform_keeps_shape_and_range(options, grow):
    images = tf.random.stateless_uniform((3, 40, 40, 3), seed=[1, 2], minval=0.2, maxval=0.9)
    view = Transforms(**options)(images, tf.constant([5, 6, 7]), tf.constant(3))
    assert view.shape == (3, 40 + grow, 40 + grow, 3)
    assert float(tf.reduce_min(view)) >= 0.2 - 1e-5 and float(tf.reduce_max(view)) <= 0.9 + 1e-5
    again = Transforms(**options)(images, tf.constant([5, 6, 7]), tf.constant(3))
    np.testing.assert_array_equal(view, again)  # stateless: same seeds, same view
    if not grow:  # the transform changed the picture (a pad is seen by its size)
        assert np.abs(view - images).max() > 0.05, "the view is the picture unchanged"
    other = Transforms(**options)(images, tf.constant([5, 6, 7]), tf.constant(4))
    if set(options) - {"pad", "blur"}:  # the random ones
        assert np.abs(view - other).max() > 0.05, "another step must draw another view"
    else:
        np.testing.assert_array_equal(view, other)


def test_a_rotation_turns_stripes_and_leaves_a_centred_disc():
    y, x = np.mgrid[0:41, 0:41] - 20.0
    disc = np.repeat((np.hypot(x, y) < 12).astype(np.float32)[None, :, :, None], 3, axis=3)
    stripes = np.repeat(((x // 4) % 2).astype(np.float32)[None, :, :, None], 3, axis=3)
    images = tf.constant(np.concatenate([disc, stripes]))
    view = Transforms(rotate=45.0)(images, tf.constant([1, 1]), tf.constant(0)).numpy()
    inner = np.hypot(x, y) < 18  # clear of the corners the rotation brings in
    assert np.abs(view[0] - disc[0])[inner].mean() < 0.03
    assert np.abs(view[1] - stripes[0])[inner].mean() > 0.2


def test_gaussian_blur_is_the_normalised_gaussian_truncated_at_two_sigma():
    from filterviz.core.transforms import gaussian_blur

    sigma = 1.5
    impulse = np.zeros((1, 21, 21, 2), np.float32)
    impulse[0, 10, 10] = 1.0
    blurred = gaussian_blur(tf.constant(impulse), sigma).numpy()
    taps = np.exp(-np.arange(-3, 4) ** 2 / (2 * sigma**2))  # radius ceil(2 sigma) = 3
    want = np.zeros((21, 21))
    want[7:14, 7:14] = np.outer(taps, taps) / taps.sum() ** 2
    for channel in range(2):
        np.testing.assert_allclose(blurred[0, :, :, channel], want, atol=1e-7)
    flat = gaussian_blur(tf.fill((1, 9, 9, 3), 0.7), sigma).numpy()  # reflected edges: no dark border
    np.testing.assert_allclose(flat, 0.7, rtol=1e-6)


def test_image_seeds_are_stable_and_per_filter():
    assert image_seeds(0, "b", [3, 4]) == image_seeds(0, "b", [3, 4])
    assert image_seeds(0, "b", [3, 4])[1] == image_seeds(0, "b", [9, 4])[1]
    assert len(set(image_seeds(0, "b", [3], copies=4))) == 4


@pytest.mark.parametrize("start", ["random", "natural"])
@pytest.mark.parametrize("squash", ["sigmoid", "clip"])
@pytest.mark.parametrize("channels", [3, 1])
def test_fourier_images_are_real_and_in_range(squash, channels, start):
    param = Fourier(squash=squash, std=0.5, start=start)
    params = param.init([1, 2], 33, channels)
    image = param.to_image(params)
    assert image.dtype == tf.float32 and image.shape == (2, 33, 33, channels)
    assert np.isfinite(image).all() and float(tf.reduce_min(image)) >= 0 and float(tf.reduce_max(image)) <= 1
    assert float(tf.math.reduce_std(image)) > 0.01, "a random spectrum is not a flat image"


@pytest.mark.parametrize("size", [32, 33])
def test_a_fourier_picture_is_that_of_its_hermitian_spectrum_so_a_gpus_fft_draws_the_same(size):
    """cuFFT's inverse real FFT assumes the spectrum is Hermitian where a real picture's is (the
    first column, and the last at an even size); a CPU's reads only that part. A random start is
    not Hermitian: the param symmetrises it, so both compute the picture of the symmetrised spectrum."""
    param = Fourier(std=0.01, decorrelate=False, squash="clip")
    params = param.init([3, 4], size, 3)
    spectrum = param.spectrum(params).numpy()
    mirror = np.roll(spectrum[..., ::-1, :], 1, axis=-2)  # the value at the negated row frequency
    edges = [0, -1] if size % 2 == 0 else [0]
    np.testing.assert_array_equal(spectrum[..., edges], np.conj(mirror[..., edges]))
    # the whole spectrum it stands for (the columns rfft leaves out are the mirror's conjugates)
    # has a real inverse, and that inverse is the picture
    full = np.zeros(spectrum.shape[:-1] + (size,), complex)
    full[..., : size // 2 + 1] = spectrum
    for column in range(size // 2 + 1, size):
        full[..., column] = np.conj(mirror[..., size - column])
    inverse = np.fft.ifft2(full)
    assert np.abs(inverse.imag).max() < 1e-6 * np.abs(inverse.real).max()
    picture = param.to_image(params).numpy()
    expected = np.transpose(inverse.real, [0, 2, 3, 1]) / 4.0 + IMAGENET_MEAN  # the clip squash adds the mean
    assert 0 < picture.min() and picture.max() < 1, "nothing clipped"
    np.testing.assert_allclose(picture, expected, atol=1e-6)


def _frequencies(n):
    return np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None] ** 2)


def test_the_shipped_spectrum_is_a_photographs_and_resamples_by_frequency():
    shipped = np.load(MACO_SPECTRUM)
    f = _frequencies(shipped.shape[-2])
    mid = (f > 0.01) & (f < 0.45)
    slopes = [np.polyfit(np.log(f[mid]), np.log(channel[mid]), 1)[0] for channel in shipped]
    assert all(-1.8 < s < -0.8 for s in slopes), f"natural photographs' amplitude falls about as 1/f: {slopes}"
    power_law = 1 / np.maximum(_frequencies(256), 1 / 256)[None]
    for size in (48, 33):  # even and odd: rfft2's row order wraps round to the negative frequencies
        want = 1 / np.maximum(_frequencies(size), 1 / size)
        np.testing.assert_allclose(resample_spectrum(power_law, size)[0, 1:, 1:], want[1:, 1:], rtol=0.01)


def _context(seed=0):
    acts = tf.random.stateless_uniform((2, 6, 6, 4), seed=[seed, 1])
    images = tf.random.stateless_uniform((2, 8, 8, 3), seed=[seed, 2])
    return objectives.Context(acts, tf.constant([1, 3]), images, 1, 0, tf.constant([1.0, 0, 0, 0]))


def test_weights_apply_to_their_own_term_only():
    ctx = _context()
    channel, l2, tv = (objectives.TERMS[n](ctx).numpy() for n in ("channel", "l2", "tv"))
    got = objectives.Objective("channel - 0.1 * l2 + 2 * tv")(ctx).numpy()
    np.testing.assert_allclose(got, channel - 0.1 * l2 + 2 * tv, rtol=1e-6)
    # xplique's bug multiplied earlier terms by later weights: the first term must stay at weight 1
    got = objectives.Objective("channel + 5 * tv")(ctx).numpy()
    np.testing.assert_allclose(got, channel + 5 * tv, rtol=1e-6)


@pytest.mark.parametrize("expr, says", [
    ("channel -", "is not a weighted sum"), ("0.1 * nonsense", "unknown objective term 'nonsense'"),
    ("channel l2", "is not a weighted sum"), ("", "objective is empty"),
])
def test_bad_objectives_say_how_to_write_one(expr, says):
    with pytest.raises(ConfigError, match=says):
        objectives.parse(expr)


def test_each_activation_term_reads_what_it_says():
    ctx = _context()
    acts = ctx.activations.numpy()
    np.testing.assert_allclose(objectives.channel(ctx), [acts[0, :, :, 1].mean(), acts[1, :, :, 3].mean()], rtol=1e-6)
    np.testing.assert_allclose(objectives.neuron(ctx), [acts[0, 3, 3, 1], acts[1, 3, 3, 3]], rtol=1e-6)
    np.testing.assert_allclose(objectives.layer(ctx), (acts**2).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(objectives.direction(ctx), acts[..., 0].mean(axis=(1, 2)), rtol=1e-6)


def test_high_frequency_fraction_separates_noise_from_smooth():
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=(1, 64, 64, 3))
    y, x = np.mgrid[0:64, 0:64] / 64.0
    smooth = np.repeat((np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))[None, :, :, None], 3, axis=3)
    assert hf_fraction(smooth)[0] < 0.01 < 0.5 < hf_fraction(noise)[0]


@pytest.fixture(scope="module")
def block3(vgg16):
    return cut_at(vgg16, "block3_conv1").extractor


def test_lucid_recipe_is_batch_invariant_and_seeded(block3):
    recipe = Recipe(**LUCID, preprocess=preprocessor("vgg16"))
    kwargs = dict(iters=6, step_size=0.05, input_size=48, recipe=recipe, seed=3, layer="block3_conv1")
    first = visualize_filters(block3, [7, 1, 2, 3], batch_size=4, **kwargs)
    last = visualize_filters(block3, [40, 41, 42, 7], batch_size=4, **kwargs)
    np.testing.assert_array_equal(first.images[0], last.images[3])
    other_seed = visualize_filters(block3, [7], batch_size=1, **{**kwargs, "seed": 4})
    assert not np.allclose(first.images[0], other_seed.images[0])


@pytest.fixture(scope="module")
def maco(block3):
    # no random views: the objective of each step is then comparable with the first's
    recipe = Recipe(param=Maco(), optimizer=LUCID["optimizer"], preprocess=preprocessor("vgg16"))
    return visualize_filters(block3, [1, 2], iters=6, step_size=0.05, input_size=48, recipe=recipe, seed=0,
                             layer="block3_conv1")


def test_maco_changes_only_the_phase_the_picture_keeps_the_natural_spectrum(maco):
    start = Maco()
    first = start.to_image(start.init(image_seeds(0, "block3_conv1", [1, 2]), 48, 3)).numpy()
    assert np.abs(maco.images - first).max() > 0.1, "the ascent changed the pictures"
    assert (maco.losses[:, -1] > maco.losses[:, 0]).all()
    # Undo the sigmoid and the colour recorrelation: what is left is an inverse FFT whose
    # magnitude is the shipped spectrum at 48 px, up to the one contrast scale.
    x = np.log(maco.images.astype(np.float64) / (1 - maco.images)) @ np.linalg.inv(COLOR_CORRELATION).T
    magnitude = np.abs(np.fft.rfft2(np.moveaxis(x, -1, 1)))
    shipped = resample_spectrum(np.load(MACO_SPECTRUM), 48)
    shipped[:, 0, 0] = 0  # the mean is the squash's: grey
    for image in magnitude:
        np.testing.assert_allclose(image / image.max(), shipped / shipped.max(), atol=1e-4)


def test_a_natural_fourier_start_is_macos_picture_and_then_its_magnitude_is_free(block3):
    seeds = image_seeds(0, "block3_conv1", [1, 2])
    maco = Maco()
    natural = Fourier(start="natural")
    np.testing.assert_allclose(natural.to_image(natural.init(seeds, 48, 3)), maco.to_image(maco.init(seeds, 48, 3)),
                               atol=1e-5)
    recipe = Recipe(param=natural, optimizer=LUCID["optimizer"], preprocess=preprocessor("vgg16"))
    result = visualize_filters(block3, [1, 2], iters=6, step_size=0.05, input_size=48, recipe=recipe, seed=0,
                               layer="block3_conv1")
    assert (result.losses[:, -1] > result.losses[:, 0]).all()
    # Unlike MaCo's, the picture's magnitude spectrum moved away from the photographs'
    x = np.log(result.images.astype(np.float64) / (1 - result.images)) @ np.linalg.inv(COLOR_CORRELATION).T
    magnitude = np.abs(np.fft.rfft2(np.moveaxis(x, -1, 1)))
    shipped = resample_spectrum(np.load(MACO_SPECTRUM), 48)
    shipped[:, 0, 0] = 0
    for image in magnitude:
        assert np.abs(image / image.max() - shipped / shipped.max()).max() > 0.05


def test_maco_keeps_an_attribution_map_and_other_params_none(maco, block3):
    a = maco.attributions
    assert a.shape == maco.images.shape and (a >= 0).all() and (a.sum(axis=(1, 2, 3)) > 0).all()
    rgba = with_attribution(maco.images[0], a[0])
    assert rgba.shape == (48, 48, 4) and rgba.dtype == np.uint8
    assert rgba[..., 3].max() == 255 and rgba[..., 3].min() < 128, "transparent where the filter did not look"
    assert visualize_filters(block3, [1], iters=1, step_size=10.0, input_size=48).attributions is None


def _gram_similarity(extractor, images):
    acts = extractor(images).numpy().reshape(len(images), -1, extractor.output_shape[-1])
    grams = np.stack([a.T @ a for a in acts]).reshape(len(images), -1)
    grams /= np.linalg.norm(grams, axis=1, keepdims=True)
    return float(grams[0] @ grams[1])


def test_diversity_pushes_a_filters_images_apart(block3):
    base = dict(**LUCID, preprocess=preprocessor("vgg16"))
    kwargs = dict(iters=20, step_size=0.05, input_size=48, seed=0, layer="block3_conv1")
    plain = visualize_filters(block3, [5], recipe=Recipe(**base, objective=objectives.Objective(copies=2)), **kwargs)
    diverse = visualize_filters(block3, [5], recipe=Recipe(**base, objective=objectives.Objective(
        "channel + 1000 * diversity", copies=2)), **kwargs)
    assert plain.filters == diverse.filters == [5, 5]
    assert not np.allclose(diverse.images[0], diverse.images[1])
    prep = preprocessor("vgg16")
    assert _gram_similarity(block3, prep(diverse.images)) < _gram_similarity(block3, prep(plain.images)) - 0.01


@pytest.fixture(scope="module")
def lucid_pictures(block3):
    """Filters 1-4 of block3_conv1 by lucid's recipe, and the recipe."""
    recipe = Recipe(**LUCID, preprocess=preprocessor("vgg16"))
    return visualize_filters(block3, [1, 2, 3, 4], iters=30, step_size=0.05, input_size=48, recipe=recipe), recipe


def test_lucid_pictures_are_more_robust_than_the_seeds(block3, lucid_pictures):
    lucid, lucid_recipe = lucid_pictures
    seed = visualize_filters(block3, lucid.filters, iters=20, step_size=10.0, input_size=48)
    seed_q = measure(block3, seed, Recipe())
    lucid_q = measure(block3, lucid, lucid_recipe)
    assert np.nanmean(lucid_q.robustness) > np.nanmean(seed_q.robustness)
    assert lucid_q.hf_fraction.mean() < seed_q.hf_fraction.mean()


def test_specificity_says_whose_picture_it_is(block3, lucid_pictures):
    """A filter's picture is more specific to that filter than to the filter of another picture,
    and, on average, than a grey or noise image is to theirs; an objective aimed at no filter has none."""
    pictures, recipe = lucid_pictures
    own = measure(block3, pictures, recipe).specificity
    as_another = replace(pictures, ids=[ImageId(f) for f in np.roll(pictures.filters, 1)])
    grey = replace(pictures, images=np.full_like(pictures.images, 0.5))
    noise = replace(pictures, images=np.random.default_rng(0).uniform(size=pictures.images.shape).astype(np.float32))
    controls = measure(block3, concatenate([as_another, grey, noise]), recipe).specificity.reshape(3, -1)
    assert ((0 <= own) & (own <= 1)).all()
    assert (own > controls[0]).all(), (own, controls[0])  # each picture: its own filter's more than another's
    assert own.mean() > controls[1:].mean(axis=1).max() + 0.1, (own, controls)  # than grey's or noise's, on average
    assert np.isnan(measure(block3, pictures, replace(recipe, objective=objectives.Objective("layer"))).specificity).all()


@needs_weights
def test_known_dead_filter_is_flagged_and_retry_revives_a_flat_start_casualty(vgg16):
    block5 = cut_at(vgg16, "block5_conv3").extractor  # filter 1: keras#18334's dead filter
    dead = visualize_filters(block5, [1, 2], iters=3, step_size=10.0, input_size=96)
    assert dead.dead().tolist() == [True, False]
    assert measure(block5, dead, Recipe()).dead.tolist() == [True, False]

    block3 = cut_at(vgg16, "block3_conv1").extractor  # filter 0: nothing to climb from flat grey
    kwargs = dict(iters=10, step_size=10.0, input_size=48)
    flat = visualize_filters(block3, [0, 1], **kwargs)
    assert flat.dead().tolist() == [True, False]
    revived = retry_dead(block3, flat, 2, recipe=Recipe(), seed=0, **kwargs)
    assert revived.dead().tolist() == [False, False]
    np.testing.assert_array_equal(revived.images[1], flat.images[1])  # live filters are left alone
    assert flat.dead().tolist() == [True, False], "the retry returns a new result; the first is unchanged"


def test_retry_revives_a_filter_the_near_grey_fourier_start_misses(vgg16):
    block2 = cut_at(vgg16, "block2_conv1").extractor
    recipe = Recipe(**LUCID, preprocess=preprocessor("vgg16"))
    kwargs = dict(iters=25, step_size=0.05, input_size=96, layer="block2_conv1")
    first = visualize_filters(block2, [0], recipe=recipe, **kwargs)
    assert first.dead().tolist() == [True]
    revived = retry_dead(block2, first, 2, recipe=recipe, seed=0, **kwargs)
    assert revived.dead().tolist() == [False]
    assert revived.losses[0, -1] > 0


@needs_weights
def test_presets_compose_and_the_gif_is_written(tmp_path):
    from filterviz import groups, job

    register_configs()
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        seed = compose("config", overrides=["experiment=seed"])
        lucid = compose("config", overrides=["experiment=lucid"])
        cfg = compose("config", overrides=["experiment=lucid", "iters=4", "input_size=32", "layer=block1_conv1",
                                           "filters=0:2", "save_gif=true", "tracking=off", f"model.weights={WEIGHTS}"])
    assert (seed.param._target_, seed.optimizer._target_, seed.preprocess, seed.step_size) == (
        "filterviz.core.params.Pixel", "filterviz.core.optimizers.L2Step", False, 10.0)
    assert not groups.build(seed, "transforms").active and seed.objective.expr == "channel"
    assert (lucid.param._target_, lucid.optimizer._target_, lucid.preprocess, lucid.transforms.pad) == (
        "filterviz.core.params.Fourier", "keras.optimizers.Adam", True, 12)
    assert isinstance(groups.build(lucid, "optimizer")(learning_rate=0.05), keras.optimizers.Adam)
    result = job.run(cfg, tmp_path)
    from PIL import Image

    with Image.open(result.results_dir / "ascent.gif") as gif:
        assert gif.n_frames == 5  # one per step and the final image
    assert 0 <= result.figures["quality/hf_fraction"] <= 1


def test_one_rule_for_dead_the_filters_activation_not_the_objective(block3):
    """A diversity objective is negative by design; its filter still fires, so it is not dead."""
    recipe = Recipe(**LUCID, preprocess=preprocessor("vgg16"),
                    objective=objectives.Objective("channel + 1000 * diversity", copies=2))
    result = visualize_filters(block3, [5], iters=4, step_size=0.05, input_size=48, recipe=recipe)
    assert (result.losses < 0).all() and (result.activations > 0).any(axis=1).all()
    assert result.dead().tolist() == [False, False] and result.dead_filters() == []
    assert measure(block3, result, recipe).dead.tolist() == [False, False]
