"""`python -m filterviz key=value ...`: the Hydra entry point, kept thin."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ chatter (e.g. "no CUDA driver")

import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

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


@hydra.main(version_base="1.3", config_path="pkg://filterviz.conf", config_name="config")
def main(cfg: DictConfig) -> None:
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
    print(f"images: {result.output_dir / 'results'}")
    if result.run_id:
        print(f"MLflow run: {result.run_id}  (artifacts: {result.artifact_uri})")
        print(f"see it:     {result.ui_command}")


if __name__ == "__main__":
    main()
