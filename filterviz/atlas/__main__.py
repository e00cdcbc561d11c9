"""`python -m filterviz.atlas key=value ...`: every filter of a model, as one resumable Hydra multirun.

Takes a run's keys (model, technique groups, iters, input_size, seed, ...) and `atlas.layers`,
`atlas.chunk`. It is the run's app as a multirun with the atlas config group and the atlas
sweeper (hydra_plugins/filterviz_atlas), which plans the jobs; each job is an ordinary run.
"""

import gc
import sys

if __name__ == "__main__":
    gc.disable()  # during the imports, as filterviz/__main__.py does for a run; its task() turns it back on

from filterviz.__main__ import main  # noqa: E402

# xla=false: each XLA-compiled step keeps ~26 MiB for the life of the process (measured, small
# model), and an atlas runs hundreds of jobs in one process. tracking.filter_series=0: no job
# streams per-step points and snapshot pictures to MLflow (the atlas page shows each filter's
# picture and curve from the run's files), which cost 11-22 % of the ascent's pace on VGG16's
# first layers (2-CPU EPYC). The user's own values still win.
ATLAS = ["--multirun", "hydra/sweeper=atlas", "+atlas=default", "xla=false", "tracking.filter_series=0"]
SWEEP_DIR = "hydra.sweep.dir=multirun/atlas/${now:%Y-%m-%d}/${now:%H-%M-%S}"


def atlas_argv(argv: list) -> list:
    """The command line as the run's app takes it; the user's own sweep folder wins."""
    given = any(a.startswith("hydra.sweep.dir=") for a in argv)
    return [*ATLAS, *([] if given else [SWEEP_DIR]), *argv]


if __name__ == "__main__":
    from hydra.core.plugins import Plugins

    from hydra_plugins.filterviz_atlas.atlas_sweeper import AtlasSweeper

    # Hydra finds plugins by scanning the hydra_plugins folders on sys.path, which an editable
    # install does not put there: register the sweeper by hand.
    Plugins.instance().register(AtlasSweeper)
    sys.argv[1:] = atlas_argv(sys.argv[1:])
    main()
