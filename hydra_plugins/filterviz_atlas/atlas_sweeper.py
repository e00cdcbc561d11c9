"""`hydra/sweeper=atlas`: the jobs of an atlas come from the model, not from the command line.

Kept thin, and free of TensorFlow and MLflow at import (Hydra imports every plugin at start):
the loop is filterviz/atlas/build.py; jobs go through whichever launcher is configured.
"""

import os
import sys
from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class AtlasSweeper(Sweeper):
    # The command prints a ConfigError as one line and exits 1, as it does a failed job; the Python
    # API (filterviz.atlas) sets this to take the error as an exception and the failures as a result.
    raise_errors = False

    def __init__(self, batch: Optional[int] = None):
        self.batch = batch  # jobs handed to the launcher at once; null: as many as it runs in parallel

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from filterviz.core.hardware import import_tensorflow_quietly

        import_tensorflow_quietly()  # before anything imports it loudly
        if not self.config.hydra.launcher._target_.endswith("BasicLauncher"):
            from filterviz.core.hardware import keep_off_gpus

            keep_off_gpus()  # the jobs compute in their own processes: this one plans and waits
        from filterviz.atlas.build import make_atlas
        from filterviz.errors import ConfigError

        try:
            built = make_atlas(self.config, arguments, self.launcher.launch, self.batch or self._parallel())
        except ConfigError as e:  # bad input: one line, not Hydra's report
            if self.raise_errors:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        if built.failed and not self.raise_errors:
            sys.exit(1)
        return built

    def _parallel(self) -> int:
        """How many jobs the configured launcher runs at once (1 in-process)."""
        launcher = self.config.hydra.launcher
        n_jobs = launcher.get("n_jobs")  # joblib; -1 and below count back from the CPUs
        if n_jobs is not None:
            return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)
        return launcher.get("array_parallelism") or 1  # submitit
