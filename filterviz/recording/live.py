"""A run's record while it runs: loss points and pictures streamed to MLflow, and a heartbeat.

Points are buffered per step as tensors (no device sync on the ascent's path) and sent with
MLflow's asynchronous `log_batch` whenever a tenth of a batch's iterations has passed or
`EVERY_SECONDS` since the last send, each with the time its step finished. A daemon thread
refreshes the run's heartbeat tag, by which a later command tells a run whose process died.
Pictures go in with MLflow's image logging (the image's series name as key, the step), so the
UI shows each charted filter's ascent with a step slider: a snapshot at every tenth of the
ascent and the final picture. Only the images given a series name are charted (the first
`tracking.filter_series`): the others are in the run's files and filters table.
"""

import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from mlflow.entities import Metric

from filterviz import stops
from filterviz.core.ascent import ImageId
from filterviz.recording.images import to_display
from filterviz.recording.owners import HEARTBEAT_SECONDS, HEARTBEAT_TAG
from filterviz.recording.tracking import MAX_BATCH, Tracker

EVERY_SECONDS = 10.0


class LiveRun:
    """A step callback of the ascent: streams each charted image's activation of its filter as
    `activation/<layer>/f<filter>` (step = iterations spent on that image, retries continuing
    after the first attempt)."""

    def __init__(self, tracker: Tracker, run_id: str, charted: Dict[ImageId, str], iters: int, copies: int = 1):
        self.tracker, self.run_id, self.charted, self.copies = tracker, run_id, charted, copies
        self.chunk_names: Dict[tuple, List[Optional[str]]] = {}
        self.every = max(1, iters // 10)
        self.pending: List[tuple] = []  # (series names or None, step, tensor, ms)
        self.last_send = time.monotonic()
        self.operations = []
        self.stopped = threading.Event()
        threading.Thread(target=self._beat, name="filterviz-heartbeat", daemon=True).start()

    def __call__(self, chunk: Sequence[int], step: int, objective, activation) -> None:
        names = self._names(tuple(chunk))
        if any(names):
            self.pending.append((names, step, activation, int(time.time() * 1000)))
        if (step + 1) % self.every == 0 or time.monotonic() - self.last_send >= EVERY_SECONDS:
            self.send()

    def _names(self, chunk: tuple) -> List[Optional[str]]:
        """The series name of each image of a chunk (None: not charted), once per chunk, not per step."""
        if chunk not in self.chunk_names:
            self.chunk_names[chunk] = [self.charted.get(ImageId(f, k)) for f in chunk for k in range(self.copies)]
        return self.chunk_names[chunk]

    def snapshot(self, ids: Sequence[ImageId], step: int, pictures: np.ndarray, final: bool) -> None:
        """Log the charted images' pictures at this step."""
        for image_id, picture in zip(ids, pictures):
            if image_id in self.charted:
                shown = (to_display(picture) * 255).round().astype(np.uint8)
                self._keep(self.tracker.client.log_image(
                    self.run_id, shown[..., 0] if shown.shape[-1] == 1 else shown,
                    key=self.charted[image_id], step=step, synchronous=False))

    def send(self) -> None:
        with stops.deferred():  # a stop between taking the points and queueing them would lose them
            metrics = [Metric(f"activation/{name}", float(value), ms, step)
                       for names, step, values, ms in self.pending
                       for name, value in zip(names, np.asarray(values)) if name]
            self.pending, self.last_send = [], time.monotonic()
            for i in range(0, len(metrics), MAX_BATCH):
                self._keep(self.tracker.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_BATCH],
                                                         synchronous=False))

    def _keep(self, operation) -> None:
        if operation is not None:  # None: the store did it at once
            self.operations.append(operation)

    def close(self) -> None:
        """Stop the heartbeat, send what is buffered and wait until every point is in the store
        (raises what the store said if it is not)."""
        self.stopped.set()
        try:
            self.send()
        finally:  # a stop during the send still waits for what is queued
            operations, self.operations = self.operations, []
            for operation in operations:
                operation.wait()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.tracker.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception:
                pass  # a store that went away is reported when the run closes
