"""Where in the input picture a unit of a layer looks: its receptive field, from the model itself.

Each tensor of the network's graph, along each spatial axis, maps its unit u to the input
pixels [lo + u * jump, hi + u * jump] (possibly past the picture's edge, which padding made up).
Walking the graph from the input, a convolution or pooling of kernel k, stride s, dilation d
and left padding p (Keras' "same" pads (total // 2) before: it depends on the axis's length, so
lengths are walked too) makes
    jump' = jump * s,  lo' = lo - p * jump,  hi' = hi + (d (k - 1) - p) * jump,
padding and cropping shift it, a merge (Add, Concatenate, ...) takes the union of its inputs'
fields, and a layer that keeps the geometry (activations, normalizations, Dense on a 4-D
tensor, ...) keeps it. Upsampling and transposed convolutions spread a unit over a fractional
jump; there the field is the smallest box of that linear form that holds every input the unit
sees (a superset by less than one input step). A unit of a (batch, units) layer sees the whole
picture. That is the field as the crops show it, the same size for every unit (`Field.box`).
Near a border some of it is padding: `Field.seen` walks back from one unit through the graph,
each layer's output units to the set of input units they read (a dilated kernel skips some),
dropping padding at every layer, to the bounding box of the pixels the unit depends on. tests/test_receptive.py checks it against
the gradient's support, and the box against it.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np

from filterviz.errors import ConfigError

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
POOLINGS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
# layers whose output, along the spatial axes, is their input's: unit u sees what input unit u sees
GEOMETRY_KEEPING = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
                    keras.layers.ELU, keras.layers.Softmax, keras.layers.BatchNormalization,
                    keras.layers.LayerNormalization, keras.layers.GroupNormalization, keras.layers.Dropout,
                    keras.layers.SpatialDropout2D, keras.layers.GaussianNoise, keras.layers.Rescaling,
                    keras.layers.Normalization, keras.layers.Dense, keras.layers.Identity)


@dataclass(frozen=True)
class Axis:
    jump: float  # input pixels between neighbouring units
    lo: float  # first input pixel unit 0 sees (negative: padding)
    hi: float  # last input pixel unit 0 sees
    length: int  # units along this axis

    def span(self, unit: int) -> Tuple[int, int]:
        """The input pixels [first, last] that `unit` sees (unclipped)."""
        return math.floor(self.lo + unit * self.jump), math.ceil(self.hi + unit * self.jump)


@dataclass(frozen=True)
class Field:
    rows: Axis
    cols: Axis
    whole: bool = False  # a (batch, units) layer: every unit sees the whole picture
    # the graph below the layer, for `seen`: (layer, its config, input tensor ids, output tensor ids) in order,
    # each tensor's (rows, cols) axes, the layer's output tensor's id and the model's input's
    steps: tuple = ()
    axes: dict = None
    output: int = 0
    inputs: tuple = ()

    def box(self, y: int, x: int, size: int) -> Tuple[int, int, int, int]:
        """(top, left, bottom, right), inclusive, in the model's `size` x `size` input: the unit's whole
        field, the same size for every unit, reaching past the picture's edge where padding does."""
        if self.whole:
            return 0, 0, size - 1, size - 1
        (top, bottom), (left, right) = self.rows.span(y), self.cols.span(x)
        return top, left, bottom, right

    def seen(self, y: int, x: int, size: int) -> Optional[Tuple[int, int, int, int]]:
        """The bounding box of the input pixels the unit at (y, x) depends on: `box` less what only
        padding fills, anywhere in the network (a unit of a padded border sees less; None: nothing)."""
        if self.whole:
            return 0, 0, size - 1, size - 1
        wanted = {self.output: tuple(_units(self.axes[self.output][a].length, u) for a, u in ((0, y), (1, x)))}
        for layer, config, ins, outs in reversed(self.steps):
            masks = [wanted.pop(o) for o in outs if o in wanted]
            if not masks:
                continue
            out = tuple(np.logical_or.reduce([m[a] for m in masks]) for a in (0, 1))
            for tensor in ins:
                below = tuple(_back(layer, config, out[a], self.axes[tensor][a].length, a) for a in (0, 1))
                if not all(m.any() for m in below):
                    continue  # this input contributes only padding
                wanted[tensor] = tuple(wanted[tensor][a] | below[a] for a in (0, 1)) if tensor in wanted else below
        found = [wanted[t] for t in self.inputs if t in wanted]
        if not found:
            return None
        rows, cols = (np.flatnonzero(np.logical_or.reduce([f[a] for f in found])) for a in (0, 1))
        return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])

    @property
    def size(self) -> Tuple[int, int]:
        """The field's height and width in input pixels (the same for every unit)."""
        return (math.ceil(self.rows.hi) - math.floor(self.rows.lo) + 1,
                math.ceil(self.cols.hi) - math.floor(self.cols.lo) + 1)


def receptive_field(model: keras.Model, layer_name: str, input_size: int) -> Field:
    """The receptive field of the units of `layer_name` for a square `input_size` input."""
    target = model.get_layer(layer_name)
    if len(target.output.shape) == 2:
        return Field(Axis(0, 0, input_size - 1, 1), Axis(0, 0, input_size - 1, 1), whole=True)
    start = Axis(1.0, 0.0, 0.0, input_size)
    fields: Dict[int, Tuple[Axis, Axis]] = {id(t): (start, start) for t in model.inputs}
    steps = []
    for layer in model.layers:
        for node in layer._inbound_nodes:
            inputs = [fields.get(id(t)) for t in node.input_tensors]
            if not inputs or any(f is None for f in inputs):
                continue  # a node of another model that uses this layer
            config = layer.get_config() if not isinstance(layer, keras.layers.InputLayer) else {}
            out = _through(layer, config, inputs)
            for tensor in node.output_tensors:
                fields[id(tensor)] = out
            steps.append((layer, config, tuple(id(t) for t in node.input_tensors),
                          tuple(id(t) for t in node.output_tensors)))
        if layer is target:
            rows, cols = fields[id(target.output)]
            return Field(rows, cols, steps=tuple(steps), axes=fields, output=id(target.output),
                         inputs=tuple(id(t) for t in model.inputs))
    raise ConfigError(f"layer {layer_name!r} cannot be reached from the input of {model.name}")


def _units(length: int, *which: int) -> np.ndarray:
    mask = np.zeros(length, bool)
    mask[list(which)] = True
    return mask


def _back(layer, config: dict, wanted: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Which units of the layer's input (of `length`) its `wanted` output units read, padding left out.
    Sets, not ranges: a dilated kernel reads every d-th unit, and near a border that decides."""
    out = np.flatnonzero(wanted)
    if isinstance(layer, CONVOLUTIONS) or isinstance(layer, POOLINGS):
        w = _windows(config)[axis]
        read = (out[:, None] * w.s - w.pad(length) + np.arange(w.k)[None, :] * w.d).ravel()
    elif isinstance(layer, keras.layers.Conv2DTranspose):  # o = i s - pad + t d
        w = _windows(config)[axis]
        taps = (out[:, None] + w.transposed_pad() - np.arange(w.k)[None, :] * w.d).ravel()
        read = taps[taps % w.s == 0] // w.s
    elif isinstance(layer, keras.layers.ZeroPadding2D):
        read = out - config["padding"][axis][0]
    elif isinstance(layer, keras.layers.Cropping2D):
        read = out + config["cropping"][axis][0]
    elif isinstance(layer, keras.layers.UpSampling2D):
        f = config["size"][axis]
        read = out // f if config.get("interpolation", "nearest") == "nearest" else \
            (out[:, None] // f + np.array([-1, 0, 1])[None, :]).ravel()  # interpolation reads the neighbours
    else:  # keeps the geometry (_through said so), or a merge
        read = out
    return _units(length, *read[(read >= 0) & (read < length)])


@dataclass(frozen=True)
class Window:
    """One axis of a convolution's or pooling's window: kernel k, stride s, dilation d."""

    k: int
    s: int
    d: int
    same: bool  # padding="same", else "valid"

    @property
    def extent(self) -> int:
        return self.d * (self.k - 1) + 1

    def length(self, length: int) -> int:
        """The output's length for an input of `length`."""
        return -(-length // self.s) if self.same else (length - self.extent) // self.s + 1

    def pad(self, length: int) -> int:
        """The padding before an input of `length`: "same" pads the total a whole number of strides
        needs, the smaller half first (TensorFlow's rule)."""
        return max((self.length(length) - 1) * self.s + self.extent - length, 0) // 2 if self.same else 0

    def transposed_pad(self) -> int:
        """The same, for a transposed convolution (the forward convolution it is the gradient of)."""
        return max(self.extent - self.s, 0) // 2 if self.same else 0


def _windows(config: dict) -> Tuple[Window, Window]:
    kernel = config.get("kernel_size") or config["pool_size"]
    strides = config.get("strides") or kernel
    dilation = config.get("dilation_rate") or (1, 1)
    return tuple(Window(k, s, d, config["padding"] == "same") for k, s, d in zip(kernel, strides, dilation))


def _through(layer, config: dict, inputs: List[Tuple[Axis, Axis]]) -> Tuple[Axis, Axis]:
    if len(inputs) > 1:  # a merge: the union of what its inputs see
        return tuple(_union([f[axis] for f in inputs], layer) for axis in (0, 1))
    rows, cols = inputs[0]
    if isinstance(layer, CONVOLUTIONS) or isinstance(layer, POOLINGS):
        return tuple(_window(a, w) for a, w in zip((rows, cols), _windows(config)))
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return tuple(_transposed(a, w) for a, w in zip((rows, cols), _windows(config)))
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return tuple(Axis(a.jump, a.lo - before * a.jump, a.hi - before * a.jump, a.length + before + after)
                     for a, (before, after) in zip((rows, cols), config["padding"]))
    if isinstance(layer, keras.layers.Cropping2D):
        return tuple(Axis(a.jump, a.lo + before * a.jump, a.hi + before * a.jump, a.length - before - after)
                     for a, (before, after) in zip((rows, cols), config["cropping"]))
    if isinstance(layer, keras.layers.UpSampling2D):
        return tuple(Axis(a.jump / f, a.lo - (f - 1) / f * a.jump, a.hi, a.length * f)
                     for a, f in zip((rows, cols), config["size"]))
    if isinstance(layer, GEOMETRY_KEEPING) or _keeps_geometry(layer):
        return rows, cols
    raise ConfigError(f"cannot follow the receptive field through layer {layer.name!r} ({type(layer).__name__}): "
                      "it changes the picture's geometry in a way filterviz does not know")


def _window(axis: Axis, w: Window) -> Axis:
    pad = w.pad(axis.length)
    return Axis(axis.jump * w.s, axis.lo - pad * axis.jump, axis.hi + (w.extent - 1 - pad) * axis.jump,
                w.length(axis.length))


def _transposed(axis: Axis, w: Window) -> Axis:
    """Output o of a transposed convolution sums inputs i with o = i s - p + t, 0 <= t < extent:
    i from (o + p - extent + 1) / s to (o + p) / s, in input units of the layer below."""
    pad = w.transposed_pad()
    length = axis.length * w.s if w.same else (axis.length - 1) * w.s + w.extent
    return Axis(axis.jump / w.s, axis.lo + (pad - w.extent + 1) / w.s * axis.jump, axis.hi + pad / w.s * axis.jump,
                length)


def _union(axes: List[Axis], layer) -> Axis:
    if any(not math.isclose(a.jump, axes[0].jump) for a in axes):
        raise ConfigError(f"layer {layer.name!r} ({type(layer).__name__}) merges tensors of different strides")
    return Axis(axes[0].jump, min(a.lo for a in axes), max(a.hi for a in axes), max(a.length for a in axes))


def _keeps_geometry(layer) -> bool:
    """An unknown layer keeps the geometry when its output's spatial shape is its input's."""
    try:
        before, after = tuple(layer.input.shape[1:3]), tuple(layer.output.shape[1:3])
    except (AttributeError, ValueError):
        return False
    return len(layer.output.shape) == 4 and before == after and None not in before
