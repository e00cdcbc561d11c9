"""The default run's speed-ups: views of the picture's size, and the XLA-compiled step."""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from conftest import GPUS, this_cpu
from filterviz.core.ascent import Ascent, Recipe
from filterviz.core.optimizers import L2Step
from filterviz.core.params import Fourier
from filterviz.core.transforms import Transforms, _uniform_per_image, warp
from filterviz.core.xla import TiledMaxPool, for_xla

LUCID_VIEWS = dict(pad=12, jitter=8, scale=[0.9, 1.1], rotate=10.0, jitter_after=4)


def small_model(pool: keras.layers.Layer) -> keras.Model:
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
    x = pool(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_b")(x)
    return keras.Model(inputs, x)


def test_the_xla_warp_samples_exactly_as_tensorflows_kernel():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((3, 40, 40, 3), np.float32))
    shift, scale = tf.constant(rng.uniform(-9, 9, (3, 2)), tf.float32), tf.constant([0.8, 1.0, 1.2])
    angle = tf.constant([-0.3, 0.0, 0.2])
    for size in (None, (32, 32)):  # a view as big as the padded picture, and one of the picture's size
        for fill in (None, 0.5):  # reflected beyond the edges, or grey
            kernel = warp(images, shift, scale, angle, size, fill=fill).numpy()
            np.testing.assert_array_equal(warp(images, shift, scale, angle, size, xla=True, fill=fill).numpy(), kernel)
            assert kernel.shape[1:3] == (size or (40, 40))


def test_a_same_size_view_is_the_padded_pictures_view_with_its_gradient_at_less_cost():
    pictures = tf.random.stateless_uniform((4, 32, 32, 3), seed=[3, 4])
    seeds, pad = tf.constant([1, 2, 3, 4]), 12
    view = Transforms(**LUCID_VIEWS, same_size=True)
    weights = tf.random.stateless_uniform((4, 32, 32, 3), seed=[5, 6])  # a gradient that differs per pixel
    for step in range(3):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(pictures)
            u = _uniform_per_image(seeds, tf.constant(step))
            padded = tf.pad(pictures, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=0.5)
            of_padded = warp(padded, u[:, 0:2] * 8 + u[:, 4:6] * 4, 0.9 + (u[:, 2] + 1) / 2 * 0.2,
                             u[:, 3] * np.pi / 18, output_size=(32, 32))
            of_picture = view(pictures, seeds, tf.constant(step))
            before, now = tf.reduce_sum(of_padded * weights), tf.reduce_sum(of_picture * weights)
        np.testing.assert_allclose(of_picture.numpy(), of_padded.numpy(), atol=1e-5)
        gradient = tape.gradient(now, pictures).numpy()
        np.testing.assert_allclose(gradient, tape.gradient(before, pictures).numpy(), atol=1e-4)
    pixels = tf.Variable(pictures)  # param=pixel: the parameters are the picture
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(view(pixels, seeds, tf.constant(step)) * weights)
    np.testing.assert_array_equal(tape.gradient(total, pixels).numpy(), gradient)


def test_same_size_views_are_the_pictures_size_and_padded_ones_are_not():
    pictures, seeds = tf.fill((2, 32, 32, 3), 0.5), tf.constant([1, 2])
    assert Transforms(**LUCID_VIEWS, same_size=True)(pictures, seeds, tf.constant(0)).shape == (2, 32, 32, 3)
    assert Transforms(**LUCID_VIEWS)(pictures, seeds, tf.constant(0)).shape == (2, 56, 56, 3)
    assert Transforms(pad=4, same_size=True)(pictures, seeds, tf.constant(0)).shape == (2, 32, 32, 3)


def test_a_tiled_max_pool_gives_the_same_activations_and_shares_the_weights():
    model = small_model(keras.layers.MaxPooling2D())
    compiled = for_xla(model)
    assert any(isinstance(layer, TiledMaxPool) for layer in compiled.layers)
    assert compiled.get_layer("conv_a") is model.get_layer("conv_a")
    odd = tf.random.uniform((2, 23, 20, 3), seed=1)  # a partial window at the edge is dropped, as "valid" does
    np.testing.assert_array_equal(compiled(odd).numpy(), model(odd).numpy())


def ascend(model, filters, batch_size, xla=True):
    recipe = Recipe(param=Fourier(), transforms=Transforms(**LUCID_VIEWS, same_size=True), optimizer=L2Step)
    return Ascent(model, recipe, iters=6, step_size=0.5, input_size=28, batch_size=batch_size, xla=xla).run(filters)


def climbed(result) -> bool:
    live = result.losses[:, -1] > 0  # a random small model has dead filters
    return live.any() and (result.losses[live, -1] > result.losses[live, 0]).all()


def test_the_xla_step_climbs_keeps_its_bits_and_ignores_batch_companions(caplog):
    tf.config.experimental.enable_op_determinism()  # as a run does: XLA must compile under it
    model = small_model(keras.layers.MaxPooling2D())
    with caplog.at_level(logging.WARNING):
        together = ascend(model, [0, 1, 2, 3], batch_size=4)
    fallbacks = [r for r in caplog.records if r.name == "filterviz.core.ascent"]
    assert not fallbacks, "the step must compile with XLA, not fall back"
    assert climbed(together)
    np.testing.assert_array_equal(ascend(model, [0, 1, 2, 3], batch_size=4).images, together.images)
    # Same batch shape, other companions: identical bits; another batch size: equal up to rounding.
    np.testing.assert_array_equal(ascend(model, [5, 2, 4, 1], batch_size=4).images[1], together.images[2])
    np.testing.assert_allclose(ascend(model, [2], batch_size=1).images[0], together.images[2], rtol=0, atol=1e-4)


def test_a_model_xla_cannot_compile_deterministically_runs_uncompiled_saying_why(caplog):
    tf.config.experimental.enable_op_determinism()
    model = small_model(keras.layers.MaxPooling2D(3, strides=2))  # overlapping windows, as ResNet50's
    with caplog.at_level(logging.WARNING):
        result = ascend(model, [0, 1], batch_size=2)
    warnings = [r.getMessage() for r in caplog.records if r.name == "filterviz.core.ascent"]
    assert len(warnings) == 1 and "running it uncompiled" in warnings[0] and "deterministic=false" in warnings[0]
    assert "\n" not in warnings[0] and np.isfinite(result.images).all()
    assert climbed(result)


class FailsItsFirstTrace:
    """The model's input preprocessing, inside the step: raises what a GPU without XLA's toolchain
    raises, the first time it is traced (XLA's compile, which comes first): an INTERNAL error
    whose message does not name XLA."""

    def __init__(self):
        self.traced = 0

    def __call__(self, x):
        self.traced += 1
        if self.traced == 1:
            raise tf.errors.InternalError(None, None, "libdevice not found at ./libdevice.10.bc")
        return x


def test_any_xla_failure_falls_back_to_the_uncompiled_step_with_one_warning(caplog):
    model = small_model(keras.layers.MaxPooling2D())

    def run(xla):
        recipe = Recipe(param=Fourier(), transforms=Transforms(**LUCID_VIEWS, same_size=True), optimizer=L2Step,
                        preprocess=FailsItsFirstTrace())
        return Ascent(model, recipe, iters=6, step_size=0.5, input_size=28, batch_size=2, xla=xla).run([0, 1])

    with caplog.at_level(logging.WARNING):
        result = run(xla=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "filterviz.core.ascent"]
    assert len(warnings) == 1 and "InternalError: libdevice not found" in warnings[0], warnings
    assert "running it uncompiled" in warnings[0] and "\n" not in warnings[0]
    assert climbed(result) and np.isfinite(result.images).all()
    np.testing.assert_array_equal(run(xla=True).images, result.images)  # the fallback is as deterministic


def test_the_image_operations_xla_fuses_in_a_plain_step_fall_back_with_one_warning(caplog):
    model = small_model(keras.layers.MaxPooling2D())

    def run(preprocess):
        recipe = Recipe(param=Fourier(), transforms=Transforms(**LUCID_VIEWS, same_size=True), optimizer=L2Step,
                        preprocess=preprocess)
        return Ascent(model, recipe, iters=6, step_size=0.5, input_size=28, batch_size=2).run([0, 1])

    with caplog.at_level(logging.WARNING):
        fused = run(lambda x: x * 2.0 - 1.0)
        assert not [r for r in caplog.records if r.name == "filterviz.core.ascent"], "it must compile"
        fell_back = run(FailsItsFirstTrace())
    warnings = [r.getMessage() for r in caplog.records if r.name == "filterviz.core.ascent"]
    assert len(warnings) == 1 and "InternalError: libdevice not found" in warnings[0], warnings
    assert "running them uncompiled" in warnings[0] and "\n" not in warnings[0]
    assert climbed(fused) and climbed(fell_back)


def test_the_default_run_compiles_with_xla_only_where_it_was_measured_faster():
    from conftest import make_cfg

    from filterviz.core.hardware import xla_is_faster

    cfg = make_cfg()
    assert cfg.xla is (GPUS == 0 and "avx512f" not in this_cpu()) and cfg.transforms.same_size
    assert make_cfg("xla=true").xla is True and make_cfg("xla=false").xla is False
    assert not make_cfg("experiment=seed").xla, "the seed preset stays bit for bit the notebooks' loop"
    # 1.3x on a CPU without AVX-512, 0.8x on one with it (experiments/benchmark.py); no GPU measured
    assert xla_is_faster(["sse4_2", "avx2", "fma"], gpus=0)
    assert not xla_is_faster(["avx2", "avx512f", "avx512bw"], gpus=0)
    assert not xla_is_faster(["avx2"], gpus=1)


def test_xla_compilations_are_kept_on_disk_for_the_next_job_where_the_cache_can_be_written(tmp_path):
    from filterviz.core.hardware import keep_xla_compilations

    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    assert keep_xla_compilations(environ) == tmp_path / "filterviz" / "xla"
    assert environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={tmp_path}/filterviz/xla"
    mine = {"TF_XLA_FLAGS": "--tf_xla_persistent_cache_directory=/mine", "XDG_CACHE_HOME": str(tmp_path)}
    assert keep_xla_compilations(mine) is None and mine["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine"
    (tmp_path / "a_file").write_text("")
    unwritable = {"XDG_CACHE_HOME": str(tmp_path / "a_file")}  # an unwritable cache would fail every compile
    assert keep_xla_compilations(unwritable) is None and "TF_XLA_FLAGS" not in unwritable
    # A process that imports filterviz and compiles leaves its compilation in the cache.
    compile_once = ("import filterviz, tensorflow as tf; "
                    "tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)(tf.ones(3)).numpy()")
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    subprocess.run([sys.executable, "-c", compile_once], env={**env, "XDG_CACHE_HOME": str(tmp_path / "home")},
                   check=True, capture_output=True)
    assert list((tmp_path / "home" / "filterviz" / "xla").iterdir())
