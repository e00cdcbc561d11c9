"""What a person sees while a run goes: a progress bar and the objective every tenth of the run."""

import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm


class Progress:
    """A step callback for the ascent: updates the bar, prints the objective like the notebooks' loss lines."""

    def __init__(self, n_filters: int, iters: int, lines: bool = True):
        self.iters, self.lines = iters, lines  # lines=False: the bar only (an atlas job)
        self.every = max(1, iters // 10)
        # disable=None: no bar when stderr is not a terminal (logs, CI, subprocess tests)
        self.bar = tqdm(total=n_filters * iters, unit="filter-iter", file=sys.stderr, disable=None, leave=False)

    def __call__(self, chunk: Sequence[int], step: int, objective, activation=None) -> None:
        iteration = step % self.iters  # a retry's steps continue after the first attempt's
        self.bar.update(len(chunk))
        if self.lines and (iteration % self.every == 0 or iteration == self.iters - 1):
            self.bar.write(_objective_line(chunk, iteration, self.iters, np.asarray(objective)), file=sys.stdout)
            sys.stdout.flush()  # into a cluster job's log file as it happens, not at the job's end

    def close(self) -> None:
        self.bar.close()


def _objective_line(chunk: Sequence[int], iteration: int, iters: int, values: np.ndarray) -> str:
    where = f"iteration {iteration + 1:>{len(str(iters))}}/{iters}"
    if len(chunk) == 1:
        return f"filter {chunk[0]}  {where}  objective {values[0]:.4f}"
    return (
        f"filters {chunk[0]}..{chunk[-1]}  {where}  objective mean {values.mean():.4f}"
        f" (min {values.min():.4f}, max {values.max():.4f})"
    )
