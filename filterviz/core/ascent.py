"""Gradient ascent on an image parameterization: one image per filter (or several, for
diversity), many filters per compiled step.

A step: parameters -> image in [0, 1] (params.py) -> a random view (transforms.py) ->
the model's preprocessing -> the layer's activations -> the objective (objectives.py)
-> the optimizer's update (optimizers.py). With the seeds' recipe (pixels from a flat 0.5,
raw image, no transforms, `channel`, l2-normalised step) this is the notebooks' algorithm,
bit for bit. Plain TensorFlow and NumPy; no Hydra, no MLflow.
"""

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from filterviz.core import objectives, own_filter, xla as xla_model
from filterviz.core.objectives import Objective
from filterviz.core.optimizers import L2Step
from filterviz.core.params import Pixel
from filterviz.core.transforms import Transforms, image_seeds
from filterviz.errors import ConfigError, first_line

log = logging.getLogger(__name__)


class _JobsTraceTheirOwn(logging.Filter):
    """Each job traces its own step and fused functions once, for its shapes. TensorFlow counts
    traces by source line across jobs, and after a few jobs in one process it warns of
    "retracing", asking the user to change code they did not write."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_JobsTraceTheirOwn())

# Called after every step with (chunk's filters, step, per-image objective, per-image activation
# of the filter, both tensors); the step counts the iterations spent on those images, a retry's continuing after the first attempt's.
StepCallback = Callable[[Sequence[int], int, tf.Tensor, tf.Tensor], None]
# Called with (image ids, step, images as NumPy, final) at every tenth of a batch's ascent and,
# with final=True, at its end.
SnapshotCallback = Callable[[Sequence["ImageId"], int, np.ndarray, bool], None]
Preprocess = Callable[[tf.Tensor], tf.Tensor]


class ImageId(NamedTuple):
    """Which image: the filter it shows, and which of that filter's copies (for diversity)."""

    filter: int
    copy: int = 0


@dataclass
class Recipe:
    """How to ascend: everything but the model, the filters and the schedule."""

    param: object = field(default_factory=Pixel)
    transforms: Transforms = field(default_factory=Transforms)
    objective: Objective = field(default_factory=Objective)
    # called with learning_rate=step_size: a Keras optimizer class, or a partial of one
    optimizer: Callable[..., keras.optimizers.Optimizer] = L2Step
    preprocess: Optional[Preprocess] = None  # [0, 1] RGB -> the model's input, inside the graph


def nothing_to_climb(activations: np.ndarray) -> np.ndarray:
    """The one rule for a dead filter, per image of (images, iterations) activations (a run's
    activations.npy): the ascent found nothing to climb, i.e. the activation never rose above its
    first value and was never above zero. After a ReLU that is "never fired" (a rectified output
    that never left 0); on a layer that is not rectified (a linear bottleneck, a convolution
    before its BatchNormalization) a negative activation that rises is alive."""
    values = np.nan_to_num(activations, nan=-np.inf)
    rose = (values[:, 1:] > values[:, :1]).any(axis=1)
    return ~(rose | (values > 0).any(axis=1))


@dataclass
class AscentResult:
    ids: List[ImageId]  # each image's filter and copy; copies of a filter are consecutive
    images: np.ndarray  # (n_images, size, size, channels): the final images (raw pixels for `pixel`)
    losses: np.ndarray  # (n_images, iters): the objective at each iteration, before its update; NaN: not run
    activations: np.ndarray  # (n_images, iters): the filter's mean activation at each iteration
    frames: List[np.ndarray] = field(default_factory=list)  # of one image, for a GIF
    complete: bool = True  # False: the ascent was stopped and these are the images it had reached
    # like images: |d objective / d image| summed over the steps, for a param that wants it (maco); else None
    attributions: Optional[np.ndarray] = None

    @property
    def filters(self) -> List[int]:
        return [i.filter for i in self.ids]

    @property
    def copies(self) -> int:
        return 1 + max((i.copy for i in self.ids), default=0)

    def dead(self) -> np.ndarray:
        return nothing_to_climb(self.activations)

    def dead_filters(self) -> List[int]:
        return sorted({i.filter for i, d in zip(self.ids, self.dead()) if d})

    def replaced_by(self, other: "AscentResult") -> "AscentResult":
        """A new result with `other`'s images in place of the same (filter, copy); the rest kept."""
        row = {image_id: j for j, image_id in enumerate(other.ids)}
        take = [(i, row[image_id]) for i, image_id in enumerate(self.ids) if image_id in row]
        images, losses, activations = self.images.copy(), self.losses.copy(), self.activations.copy()
        attributions = None if self.attributions is None else self.attributions.copy()
        for i, j in take:
            images[i], losses[i], activations[i] = other.images[j], other.losses[j], other.activations[j]
            if attributions is not None:
                attributions[i] = other.attributions[j]
        return replace(self, images=images, losses=losses, activations=activations, attributions=attributions)


def concatenate(parts: Sequence[AscentResult], complete: bool = True) -> AscentResult:
    attributions = [p.attributions for p in parts]
    return AscentResult([i for p in parts for i in p.ids], np.concatenate([p.images for p in parts]),
                        np.concatenate([p.losses for p in parts]), np.concatenate([p.activations for p in parts]),
                        [f for p in parts for f in p.frames], complete,
                        None if any(a is None for a in attributions) else np.concatenate(attributions))


def chunks(filters: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(filters[i : i + batch_size]) for i in range(0, len(filters), batch_size)]


# Optimizer options that only Keras' own apply_gradients honours.
_APPLY_ONLY = ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay", "use_ema", "gradient_accumulation_steps",
               "loss_scale_factor")


def climb(optimizer: keras.optimizers.Optimizer, gradient: tf.Tensor, variable: tf.Variable) -> None:
    """One optimizer update, as `apply_gradients` would make it. Traced inside a tf.function,
    `apply_gradients` goes through tf.distribute's all_reduce, which registers a new gradient
    function in TensorFlow's global registry at every trace and so keeps each traced step's
    graph alive for good: ~10 MiB per job of an in-process atlas. With no option that needs
    it, the update step and the iteration count are all it does for one replica."""
    if any(getattr(optimizer, option, None) for option in _APPLY_ONLY):
        optimizer.apply_gradients([(gradient, variable)])
        return
    optimizer.update_step(gradient, variable, optimizer.learning_rate)
    optimizer.iterations.assign_add(1)


class _Compiled:
    """One batch shape's parameter variable, its optimizer and the compiled step, reused by every
    chunk of that shape (a new chunk resets them), so the step is traced once per shape. For a
    param that `wants_attribution`, also the sum of |d objective / d image| over the steps."""

    def __init__(self, extractor: keras.Model, recipe: Recipe, shape: Tuple[int, ...], step_size: float,
                 xla: bool = False):
        # Grappler's arithmetic optimizer rewrites the mean and the l2-normalisation with a
        # different rounding; without it the compiled step is bit-identical to the notebooks'
        # eager loop, at no measured speed cost.
        tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
        self.params = tf.Variable(tf.zeros(shape, tf.float32))
        self.optimizer = recipe.optimizer(learning_rate=step_size)
        self.optimizer.build([self.params])
        self._fresh = [v.numpy() for v in self.optimizer.variables]
        params, optimizer, objective = self.params, self.optimizer, recipe.objective
        # A Python choice, made when the step is traced: other params' steps are unchanged.
        self.attribution = (tf.Variable(tf.zeros_like(recipe.param.to_image(params)))
                            if getattr(recipe.param, "wants_attribution", False) else None)
        attribution = self.attribution
        # The layer for each image's own filter alone, where the objective reads nothing else (own_filter.py)
        own = own_filter.split(extractor) if objective.own_filter_only else None

        def step_of(to_image, preprocess):
            def step(filter_indices, seeds, t):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(params)
                    images = to_image(params)
                    view = recipe.transforms(images, seeds, t, xla=xla) if recipe.transforms.active else images
                    model_input = preprocess(view) if preprocess else view
                    context = (objective.context(None, filter_indices, images, own=own(model_input, filter_indices))
                               if own else objective.context(extractor(model_input, training=False), filter_indices,
                                                             images))
                    value = objective(context)
                    # Images are independent, so d(sum)/d(image_i) is the gradient of objective_i alone.
                    total = tf.reduce_sum(value)
                if attribution is None:
                    grads = tape.gradient(total, params)
                else:  # d objective / d image, through the random views: where in the image the filter looked
                    grads, image_grads = tape.gradient(total, [params, images])
                    attribution.assign_add(tf.abs(image_grads))
                climb(optimizer, -grads, params)  # Keras descends; we climb
                return value, objectives.activation(context)
            return step

        self._plain = self.step = tf.function(step_of(recipe.param.to_image, recipe.preprocess), autograph=False)
        self._uncompiled_image = self.to_image = recipe.param.to_image
        self._whole = xla
        if xla:  # the whole step
            self.step = tf.function(step_of(recipe.param.to_image, recipe.preprocess), jit_compile=True,
                                    autograph=False)
        else:
            # The elementwise work around the network fused by XLA inside the plain step, where the
            # network's convolutions and the views' warp stay TensorFlow's kernels. On a 2-core AVX-512
            # CPU, for 16 pictures at 96 px, forward and gradient: the picture from its Fourier
            # parameters 6.9 -> 1.9 ms, VGG16's preprocessing (its channel reversal's gradient is slow
            # op by op) 3.2 -> 0.24 ms. Pixels are no work to fuse (and the seeds' step keeps its bits).
            fused = lambda fn: tf.function(fn, jit_compile=True, autograph=False)  # noqa: E731
            picture = not isinstance(recipe.param, Pixel)
            preprocess = fused(recipe.preprocess) if recipe.preprocess else None
            if picture:
                self.to_image = fused(recipe.param.to_image)
            if picture or preprocess:
                self.step = tf.function(step_of(self.to_image, preprocess), autograph=False)
            if picture:
                try:  # compiled now, so a failure is known before a snapshot asks for the picture
                    self.to_image(self.params)
                except Exception as error:
                    self._uncompiled(error)
        self._untried = self.step is not self._plain

    def _uncompiled(self, error: Exception) -> None:
        """XLA's compile can fail in any way (an op it has no kernel for, a max pool's gradient under
        op determinism, a GPU without XLA's toolchain): the plain graph from now on, saying so once."""
        self.step, self.to_image, self._untried = self._plain, self._uncompiled_image, False
        message = getattr(error, "message", None) or str(error)
        reason = ("the gradient of its overlapping max pools has no deterministic XLA form; deterministic=false "
                  "allows it" if "MaxPool" in message else f"{type(error).__name__}: {first_line(error)}")
        if self._whole:
            log.warning("xla=true: XLA cannot compile this model's step (%s): running it uncompiled", reason)
        else:
            log.warning("XLA cannot compile the step's image operations (%s): running them uncompiled", reason)

    def __call__(self, filter_indices: tf.Tensor, seeds: tf.Tensor, t: tf.Tensor):
        """One step; the first tries what XLA compiles, and an error there falls back to the plain
        graph (`_uncompiled`). An error the plain graph makes too is the model's: raised as it is."""
        if not self._untried:
            return self.step(filter_indices, seeds, t)
        self._untried = False
        try:
            return self.step(filter_indices, seeds, t)
        except Exception as error:  # Stopped and KeyboardInterrupt are not Exceptions: they pass
            self._uncompiled(error)
            return self.step(filter_indices, seeds, t)

    def image(self) -> tf.Tensor:
        """The pictures the parameters make now, as the step makes them."""
        return self.to_image(self.params)

    def reset(self, start: tf.Tensor) -> None:
        self.params.assign(start)
        if self.attribution is not None:
            self.attribution.assign(tf.zeros_like(self.attribution))
        for variable, value in zip(self.optimizer.variables, self._fresh):
            variable.assign(value)


class Ascent:
    """Maximise a recipe's objective for many filters of `extractor`'s output, a batch at a time.

    Random starts and views are seeded per image from (seed, layer, filter, copy, stream), so a
    filter's images do not depend on which filters share its batch. What has been computed so
    far stays readable through `partial()`, also after the run was interrupted.
    """

    def __init__(self, extractor: keras.Model, recipe: Optional[Recipe] = None, *, iters: int, step_size: float,
                 input_size: int, batch_size: int = 16, seed: int = 0, layer: str = "", stream: str = "",
                 xla: bool = False,
                 on_step: Optional[StepCallback] = None, first_step: int = 0,
                 guard: Callable[[], AbstractContextManager] = nullcontext,
                 on_snapshot: Optional[SnapshotCallback] = None, gif_filter: Optional[int] = None,
                 gif_frames: int = 40):
        self.extractor, self.recipe = xla_model.for_xla(extractor) if xla else extractor, recipe or Recipe()
        self.iters, self.step_size, self.input_size, self.batch_size = iters, step_size, input_size, batch_size
        self.seed, self.layer, self.stream, self.on_step, self.first_step = seed, layer, stream, on_step, first_step
        # each step is kept (here and by on_step) inside guard(): the app defers stop signals there,
        # so a stopped run's file and streamed points hold the same steps
        self.guard = guard
        self.xla = xla  # compile the step with XLA: whole-step fusion, ~1.3x on a CPU (docs/speed.md)
        self.gif_filter, self.gif_every = gif_filter, max(1, iters // gif_frames)
        self.on_snapshot, self.snapshot_every = on_snapshot, max(1, iters // 10)
        self.done: List[AscentResult] = []
        self._running: Optional[Tuple[List[ImageId], _Compiled, list, list, list]] = None
        self._compiled: Dict[Tuple[int, ...], _Compiled] = {}

    def run(self, filters: Sequence[int]) -> AscentResult:
        copies = self.recipe.objective.copies
        for chunk in chunks(filters, max(1, self.batch_size // copies)):
            self.done.append(self._ascend(chunk, copies))
        return concatenate(self.done)

    def partial(self) -> Optional[AscentResult]:
        """The finished batches and the running one as far as it got; None before the first step."""
        parts = list(self.done)
        if self._running is not None:
            ids, compiled, losses, activations, frames = self._running
            if losses:
                pad = np.full((len(ids), self.iters - len(losses)), np.nan, np.float32)
                parts.append(AscentResult(
                    ids, compiled.image().numpy(),
                    np.concatenate([tf.stack(losses, axis=1).numpy(), pad], axis=1),
                    np.concatenate([tf.stack(activations, axis=1).numpy(), pad], axis=1), frames,
                    attributions=_numpy(compiled.attribution)))
        return concatenate(parts, complete=False) if parts else None

    def _ascend(self, chunk: List[int], copies: int) -> AscentResult:
        ids = [ImageId(f, k) for f in chunk for k in range(copies)]
        seeds = image_seeds(self.seed, self.layer, chunk, copies, self.stream)
        start = self.recipe.param.init(seeds, self.input_size, int(self.extractor.input_shape[-1]))
        compiled = self._compiled.get(tuple(start.shape))
        if compiled is None:
            compiled = self._compiled[tuple(start.shape)] = _Compiled(self.extractor, self.recipe, tuple(start.shape),
                                                                      self.step_size, self.xla)
        compiled.reset(start)
        indices = tf.constant([i.filter for i in ids], tf.int32)
        seeds_t = tf.constant(seeds, tf.int32)
        traced = chunk.index(self.gif_filter) * copies if self.gif_filter in chunk else None
        losses, activations, frames = [], [], []
        self._running = (ids, compiled, losses, activations, frames)
        for i in range(self.iters):
            if traced is not None and i % self.gif_every == 0:
                frames.append(compiled.image()[traced].numpy())
            if self.on_snapshot is not None and i % self.snapshot_every == 0:
                self.on_snapshot(ids, self.first_step + i, compiled.image().numpy(), False)
            value, activation = compiled(indices, seeds_t, tf.constant(i, tf.int32))
            with self.guard():
                losses.append(value)  # stays a tensor: no device sync per step
                activations.append(activation)
                if self.on_step is not None:
                    self.on_step(chunk, self.first_step + i, value, activation)
        final = compiled.image().numpy()
        if traced is not None:
            frames.append(final[traced])
        if self.on_snapshot is not None:
            self.on_snapshot(ids, self.first_step + self.iters, final, True)
        self._running = None
        result = AscentResult(ids, final, tf.stack(losses, axis=1).numpy(), tf.stack(activations, axis=1).numpy(),
                              frames, attributions=_numpy(compiled.attribution))
        _check_finite(result)
        return result


def _numpy(variable: Optional[tf.Variable]) -> Optional[np.ndarray]:
    return None if variable is None else variable.numpy()


def _check_finite(result: AscentResult) -> None:
    bad = ~np.isfinite(result.losses) | ~np.isfinite(result.images).all(axis=(1, 2, 3))[:, None]
    if bad.any():
        image, step = np.argwhere(bad)[0]
        raise ConfigError(f"the ascent diverged: filter {result.ids[image].filter}'s objective or image became "
                          f"NaN or infinite by iteration {step + 1}; try a smaller step_size")


def visualize_filters(extractor: keras.Model, filters: Sequence[int], **kwargs) -> AscentResult:
    """One `Ascent` over `filters`: see its arguments."""
    return Ascent(extractor, **kwargs).run(filters)


def retry_dead(extractor: keras.Model, result: AscentResult, attempts: int, *, recipe: Recipe,
               **kwargs) -> AscentResult:
    """A new result in which dead filters are run again from livelier random starts, attempt k
    drawing from its own random stream `retry<k>` (the same start would only repeat)."""
    livelier = replace(recipe, param=recipe.param.livelier())
    for attempt in range(1, attempts + 1):
        dead = result.dead_filters()
        if not dead:
            break
        again = visualize_filters(extractor, dead, recipe=livelier, stream=f"retry{attempt}",
                                  first_step=attempt * kwargs["iters"], **kwargs)
        result = result.replaced_by(again)
    return result
