"""The config tree composes as documented, each group builds its class, and a broken run ends FAILED."""

import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from conftest import GPUS, make_cfg, this_cpu


def test_the_default_is_the_best_preset_and_the_seed_preset_is_the_notebooks():
    cfg = make_cfg()
    assert (cfg.model.name, cfg.model.weights, cfg.layer) == ("vgg16", "imagenet", "block3_conv1")
    assert (cfg.input_size, cfg.tracking.enabled) == (96, True)
    best = make_cfg("experiment=best")
    assert cfg == best
    seed = make_cfg("experiment=seed")
    assert (seed.param._target_, seed.transforms.pad, seed.objective.expr, seed.optimizer._target_) == (
        "filterviz.core.params.Pixel", 0, "channel", "filterviz.core.optimizers.L2Step")
    assert (seed.step_size, seed.preprocess, seed.param.init_value) == (10.0, False, 0.5)


def test_the_default_precision_is_bfloat16_only_where_the_cpu_computes_in_it():
    from filterviz.core.hardware import fastest_precision

    computes_in_bfloat16 = bool({"avx512_bf16", "amx_bf16"} & this_cpu()) and GPUS == 0
    assert make_cfg().precision.value == ("bfloat16" if computes_in_bfloat16 else "float32")
    assert make_cfg("precision=float32").precision.value == "float32"
    assert make_cfg("precision=bfloat16").precision.value == "bfloat16"
    assert make_cfg("experiment=seed").precision.value == "float32", "the seed preset stays the notebooks' bits"
    assert make_cfg("model=file", "model.path=m.keras").precision.value == "float32", "a saved model keeps its own"
    # 1.7x with the same quality figures on a CPU with AVX512-BF16; emulated elsewhere; no GPU measured
    assert fastest_precision("vgg16", ["avx2", "avx512f", "avx512_bf16"], gpus=0) == "bfloat16"
    assert fastest_precision("resnet50", ["avx2", "amx_bf16"], gpus=0) == "bfloat16"
    assert fastest_precision("vgg16", ["avx2", "avx512f"], gpus=0) == "float32"
    assert fastest_precision("vgg16", ["avx512_bf16"], gpus=1) == "float32"
    assert fastest_precision("file", ["avx512_bf16"], gpus=0) == "float32"


def test_the_maco_preset_is_the_default_recipe_with_maco_phase_only():
    best, maco = make_cfg(), make_cfg("experiment=maco")
    assert (maco.param._target_, maco.preset) == ("filterviz.core.params.Maco", "maco")
    for key in ("transforms", "optimizer", "objective", "iters", "step_size", "preprocess", "retry_dead"):
        assert maco[key] == best[key], key


def test_command_line_groups_win_over_the_preset():
    cfg = make_cfg("optimizer=l2_step", "step_size=3")
    assert (cfg.optimizer._target_, cfg.step_size, cfg.param._target_) == (
        "filterviz.core.optimizers.L2Step", 3.0, "filterviz.core.params.Fourier")


@pytest.mark.parametrize("model", ["vgg16", "vgg19", "resnet50", "file"])
def test_each_model_option_composes(model):
    cfg = make_cfg(f"model={model}", "layer=x")
    assert cfg.model.name == model


def test_layer_follows_the_models_default_unless_given():
    assert make_cfg("model=resnet50").layer == "conv3_block1_1_conv"
    assert make_cfg("model=resnet50", "layer=conv1_conv").layer == "conv1_conv"


def test_filters_take_every_documented_form():
    assert make_cfg("filters=[0,5,9]").filters == [0, 5, 9]
    assert make_cfg("filters=0:16").filters == "0:16"
    assert make_cfg("filters=random:4").filters == "random:4"


@pytest.mark.parametrize("override", ["iters=abc", "step_size=fast", "tracking.enabled=maybe", "nokey=1"])
def test_wrong_overrides_fail_in_hydra(override):
    with pytest.raises(ConfigCompositionException):
        make_cfg(override)


def test_a_run_that_breaks_ends_failed_with_the_error_recorded(tmp_path, monkeypatch):
    from filterviz import job

    cfg = make_cfg("tracking.uri=sqlite:///" + str(tmp_path / "mlflow.db"), "model.weights=null",
                   "layer=block1_conv1", "iters=1", "input_size=32")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(job.Ascent, "run", broken)
    with pytest.raises(RuntimeError):
        job.run(cfg, tmp_path / "out", run_name="broken")
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("filterviz").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: out of memory, say"


def test_group_choices_are_checked_in_one_line_before_hydra():
    from filterviz.__main__ import unknown_group_choice

    said = unknown_group_choice(["model=resnet", "iters=3"])
    assert said.startswith("unknown model 'resnet': use one of convnextbase, ")
    assert {"file", "mobilenetv2", "resnet50", "vgg16", "xception"} <= set(said.split(": use one of ")[1].split(", "))
    assert unknown_group_choice(["model=mobilenetv2"]) is None, "every application is a choice"
    assert unknown_group_choice(["experiment=lucid,nope"]).startswith("unknown experiment 'nope': use one of best,")
    assert unknown_group_choice(["experiment=null"]) == \
        "experiment=null is not an option: to drop the default experiment, write ~experiment"
    assert unknown_group_choice(["~experiment", "param=fourier", "model=choice(vgg16,vgg19)"]) is None
    assert unknown_group_choice(["layer=block1_conv1", "hydra/launcher=joblib"]) is None


@pytest.mark.parametrize("group, option, cls", [
    ("param", "pixel", "Pixel"), ("param", "fourier", "Fourier"), ("param", "maco", "Maco"),
    ("transforms", "standard", "Transforms"),
    ("objective", "diversity", "Objective"), ("optimizer", "l2_step", "L2Step"), ("optimizer", "adam", "Adam")])
def test_each_technique_option_builds_the_class_it_names(group, option, cls):
    from filterviz import groups

    built = groups.build(make_cfg(f"{group}={option}"), group)
    built = built(learning_rate=0.1) if group == "optimizer" else built
    assert type(built).__name__ == cls


def test_the_lucid_presets_start_on_another_param_is_one_line():
    """lucid's random std=0.01 start comes with the preset (the default starts from a natural
    spectrum); a param without that setting says so."""
    from filterviz import groups
    from filterviz.errors import ConfigError

    lucid, default = make_cfg("experiment=lucid").param, make_cfg().param
    assert (lucid.start, lucid.std, default.start) == ("random", 0.01, "natural")
    with pytest.raises(ConfigError, match="^param.start: Maco has no such setting; it takes no settings$"):
        groups.build(make_cfg("experiment=lucid", "param=maco"), "param")


@pytest.mark.parametrize("override, says", [
    ("param.decay=fast", "param.decay: Value 'fast' of type 'str' could not be converted to Float"),
    ("transforms.scale=[a,b]", "transforms.scale[0]: Value 'a' of type 'str' could not be converted to Float"),
    ("objective.copies=0", "objective.copies=0: at least 1 image per filter"),
    ("optimizer.beta_1=high", "optimizer.beta_1='high': expected a float (default 0.9)"),
    ("param.start=sideways", "param.start: Invalid value 'sideways', expected one of [random, natural]"),
    ("+param.nonsense=1", "param.nonsense: Fourier has no such setting; it takes decay, decorrelate, squash, start, "
                          "std"),
])
def test_a_wrong_technique_value_is_one_line_naming_the_key(override, says):
    from filterviz import groups
    from filterviz.errors import ConfigError

    group = override.split(".")[0].lstrip("+")
    with pytest.raises(ConfigError) as e:
        built = groups.build(make_cfg(override), group)
        built(learning_rate=0.1)  # a Keras optimizer checks its values when made
    assert says in str(e.value) and "\n" not in str(e.value)
