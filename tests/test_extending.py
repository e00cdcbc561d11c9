"""The docs' promise (docs/extending.md): a new technique is one class and one YAML file that names it."""

import re
import sys
import textwrap

import numpy as np
from hydra import compose, initialize_config_module

from conftest import ROOT, WEIGHTS, needs_weights
from filterviz.config import register_configs


@needs_weights
def test_the_docs_new_parameterization_runs_from_one_class_and_one_yaml(tmp_path, monkeypatch):
    section = (ROOT / "docs" / "extending.md").read_text()
    code, yaml = re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S)[:2]
    (tmp_path / "my_params.py").write_text(
        "from dataclasses import dataclass, replace\nimport tensorflow as tf\n"
        "from filterviz.core.params import per_image_normal\n\n" + textwrap.dedent(code))
    (tmp_path / "conf" / "param").mkdir(parents=True)
    (tmp_path / "conf" / "param" / "colour.yaml").write_text(yaml.replace("filterviz.core.params", "my_params"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_params", None)

    from filterviz import job

    register_configs()
    with initialize_config_module(version_base="1.3", config_module="filterviz.conf"):
        cfg = compose("config", overrides=[
            f"hydra.searchpath=[pkg://filterviz.experiments,file://{tmp_path / 'conf'}]", "param=colour",
            "param.std=1", "layer=block1_conv1", "filters=0:2", "iters=3", "input_size=16", "tracking=off",
            f"model.weights={WEIGHTS}"])
    result = job.run(cfg, tmp_path / "out")
    images = np.load(result.results_dir / "images.npy")
    assert images.shape == (2, 16, 16, 3)
    assert np.ptp(images, axis=(1, 2)).max() < 1e-6, "one colour per image"
    assert not np.allclose(images[0], images[1])
