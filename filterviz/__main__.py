"""`python -m filterviz key=value ...`: the Hydra entry point, kept thin."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ chatter (e.g. "no CUDA driver")

import shlex  # noqa: E402
import sys  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from filterviz.config import register_configs  # noqa: E402
from filterviz.errors import ConfigError  # noqa: E402

register_configs()


def _import_tensorflow_quietly() -> None:
    """TensorFlow 2.21 prints C++ start-up lines on stderr whatever TF_CPP_MIN_LOG_LEVEL says."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def unknown_group_choice(overrides: List[str]) -> Optional[str]:
    """Hydra reports an unknown config-group option over several lines; say it in one."""
    conf = resources.files("filterviz.conf")
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or not key.isidentifier() or "(" in value or not (conf / key).is_dir():
            continue  # not a group of ours, or a sweep function Hydra will expand
        options = sorted(p.name[: -len(".yaml")] for p in (conf / key).iterdir() if p.name.endswith(".yaml"))
        for choice in value.split(","):
            if choice not in options:
                return f"unknown {key} {choice!r}: use one of {', '.join(options)}"
    return None


def main() -> None:
    problem = unknown_group_choice(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://filterviz.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    _import_tensorflow_quietly()  # here, after Hydra has parsed the command line
    from filterviz import job

    hydra_cfg = HydraConfig.get()
    command = shlex.join(["python", "-m", "filterviz", *sys.argv[1:]])
    try:
        result = job.run(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.override_dirname or None, command)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    print(f"images: {result.results_dir}")
    if result.run_id:
        print(f"MLflow run: {result.run_id}  (artifacts: {result.artifact_uri})")
        print(f"see it:     {result.ui_command}")


if __name__ == "__main__":
    main()
