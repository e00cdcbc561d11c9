"""`python -m filterviz.exemplars data=<folder> [model=...] [layers=...] [k=...]`: each filter's top
natural images, in one resumable pass (conf/exemplars.yaml). `shards=N` splits the pass into N jobs
of Hydra's launcher (`hydra/launcher=joblib`, or SLURM), merged into their parent run at the end.
"""

import gc
import sys

if __name__ == "__main__":
    gc.disable()  # during the imports, as filterviz/__main__.py does; task() turns it back on

import shlex  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from filterviz.__main__ import end_at_once, main  # noqa: E402
from filterviz.core.hardware import import_tensorflow_quietly  # noqa: E402
from filterviz.errors import ConfigError, Stopped, first_line  # noqa: E402
from filterviz.stops import in_worker  # noqa: E402


def task(cfg: DictConfig) -> None:
    with in_worker():  # a joblib shard: a stop ends it as main() does, from its first line
        _task(cfg)


def _task(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    import_tensorflow_quietly()
    from filterviz.exemplars import job
    from filterviz.job import say_device
    from filterviz.recording import sweep

    if not gc.isenabled():
        gc.freeze()
        gc.enable()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    record = sweep.read_record(Path(hydra_cfg.sweep.dir)) if multirun else None
    overrides = list(hydra_cfg.overrides.task)
    command = shlex.join(["python", "-m", "filterviz.exemplars", *(overrides if multirun else sys.argv[1:])])
    output_dir = Path(hydra_cfg.runtime.output_dir)
    say_device()
    try:
        outcome = job.run(cfg, output_dir, command, record and record.parent_run_id)
    except Stopped as stop:
        print(f"{stop}: the images read so far are checkpointed; the same command resumes the pass", file=sys.stderr)
        raise
    except Exception as e:
        error = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {first_line(e)}"
        if not multirun:
            if isinstance(e, ConfigError):
                print(f"error: {e}", file=sys.stderr)
                sys.exit(1)
            raise
        print(f"error: shard {cfg.shard}: {error}", file=sys.stderr)
        sweep.record_failure(output_dir, overrides, error)
        return
    if not multirun and outcome.run_id:
        print(f"MLflow run: {outcome.run_id}")
        print(f"see it:     {outcome.ui_command}")
        print(f"            then open {outcome.run_url}")


hydra_main = hydra.main(version_base="1.3", config_path="pkg://filterviz.conf", config_name="exemplars")(task)


def sharded_argv(argv: list) -> list:
    """`shards=N` runs the pass as N jobs of a multirun, one per shard."""
    shards = [a.split("=", 1)[1] for a in argv if a.startswith("shards=")]
    if not shards or shards[-1] in ("1", "") or any(a.startswith("shard=") for a in argv):
        return argv
    if not shards[-1].isdigit():
        return argv  # the schema says what is wrong with it
    return ["--multirun", f"shard=range(0,{shards[-1]})", *[a for a in argv if a not in ("-m", "--multirun")]]


if __name__ == "__main__":
    sys.argv[1:] = sharded_argv(sys.argv[1:])
    main(hydra_main)
    if "--multirun" not in sys.argv:
        end_at_once()
