"""Load a network and cut it at the convolution layer whose filters we visualise."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import keras

from filterviz.errors import ConfigError, first_line

# Built without a fixed input size, so one model serves every `input_size`.
APPLICATIONS: Dict[str, Callable[..., keras.Model]] = {
    "vgg16": keras.applications.VGG16,
    "vgg19": keras.applications.VGG19,
    "resnet50": keras.applications.ResNet50,
}
MODEL_NAMES = sorted(APPLICATIONS) + ["file"]
# Each application's own preprocessing, applied in the graph to 0..255 RGB.
PREPROCESS_INPUT = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "vgg19": keras.applications.vgg19.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
}


@dataclass
class LayerCut:
    """A model truncated at one convolution layer."""

    extractor: keras.Model
    layer: str
    n_filters: int
    channels: int


def load_model(name: str, weights: Optional[str] = "imagenet", path: Optional[str] = None,
               precision: str = "float32") -> keras.Model:
    """A model by `name`: a keras.applications network or, for `file`, a saved Keras model.

    `precision="bfloat16"` builds it under Keras' mixed_bfloat16 policy: float32 weights,
    bfloat16 arithmetic.
    """
    if precision != "float32":
        if name == "file":
            raise ConfigError("precision=bfloat16 applies to vgg16, vgg19 and resnet50; a saved model keeps its own")
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(f"mixed_{precision}")
        try:
            return load_model(name, weights, path)
        finally:
            keras.config.set_dtype_policy(previous)
    if name == "file":
        if weights == "imagenet":
            raise ConfigError("model=file has no ImageNet weights: model.weights takes null (the file's own) or a path")
        model = _load_file(path)
        if weights is not None:
            _load_weights(model, weights, "the model in " + str(path))
        return model
    if name not in APPLICATIONS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    build = APPLICATIONS[name]
    if weights is None:
        return build(include_top=False, weights=None, input_shape=(None, None, 3))
    if weights == "imagenet":
        try:
            return build(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as e:  # Keras raises plain Exception on a failed download
            raise ConfigError(
                f"could not get the ImageNet weights of {name} ({first_line(e)}); without network, "
                f"pass a weights file: model.weights=<path to {name} .weights.h5>"
            ) from None
    model = build(include_top=False, weights=None, input_shape=(None, None, 3))
    _load_weights(model, weights, name)
    return model


def preprocessor(name: str) -> Optional[Callable]:
    """[0, 1] RGB images -> what `name` was trained on (VGG/ResNet: BGR, mean-subtracted 0..255).

    None for a user's own model, which gets the [0, 1] image as it is.
    """
    if name not in PREPROCESS_INPUT:
        return None
    preprocess_input = PREPROCESS_INPUT[name]
    return lambda images: preprocess_input(images * 255.0)


def conv_layer_names(model: keras.Model) -> List[str]:
    return [layer.name for layer in model.layers if _is_conv(layer)]


@dataclass(frozen=True)
class ConvLayer:
    name: str
    filters: int
    cost: float  # multiply-adds of one image's forward pass from the input to this layer's output


def conv_layers(model: keras.Model, size: int) -> List[ConvLayer]:
    """Every convolution of `model`, in order, with the cost of reaching it at `size`x`size` (the
    convolutions before it in the model's layer order: exact for a chain, an upper bound otherwise)."""
    convs = [layer for layer in model.layers if _is_conv(layer)]
    shapes = keras.Model(model.inputs, [layer.output for layer in convs]).compute_output_shape(
        (1, size, size, int(model.input_shape[-1])))
    total, found = 0.0, []
    for layer, shape in zip(convs, shapes if isinstance(shapes, (list, tuple)) and len(convs) > 1 else [shapes]):
        kh, kw = layer.kernel_size
        total += math.prod(shape[1:3]) * kh * kw * int(layer.input.shape[-1]) * int(layer.filters) / layer.groups
        found.append(ConvLayer(layer.name, int(layer.filters), total))
    return found


def cut_at(model: keras.Model, layer_name: Optional[str]) -> LayerCut:
    """Truncate `model` so that it outputs the activations of the conv layer `layer_name`."""
    convs = conv_layer_names(model)
    if layer_name is None:
        raise ConfigError(f"no layer given: pass layer=<name>, one of {', '.join(convs)}")
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ConfigError(f"unknown layer {layer_name!r} in {model.name}: conv layers are {', '.join(convs)}")
    layer = model.get_layer(layer_name)
    if not _is_conv(layer):
        raise ConfigError(
            f"layer {layer_name!r} is a {type(layer).__name__}, not a convolution: use one of {', '.join(convs)}"
        )
    extractor = keras.Model(model.inputs, layer.output, name=f"{model.name}_to_{layer_name}")
    return LayerCut(extractor, layer_name, int(layer.filters), int(model.input_shape[-1]))


def check_input_size(cut: LayerCut, size: int, largest: int = 1024) -> None:
    """Raise unless a `size`×`size` image reaches the layer with at least one pixel; say the minimum."""
    fixed = cut.extractor.input_shape[1:3]
    if any(d is not None for d in fixed):
        if tuple(fixed) != (size, size):
            raise ConfigError(f"this model takes {fixed[0]}x{fixed[1]} inputs: set input_size={fixed[0]}")
        return
    if _reaches_layer(cut, size):
        return
    lo, hi = size, largest  # the smallest working size lies in (lo, hi]
    if not _reaches_layer(cut, hi):
        raise ConfigError(f"no input_size up to {largest} reaches layer {cut.layer}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _reaches_layer(cut, mid) else (mid, hi)
    raise ConfigError(f"input_size={size} is too small for layer {cut.layer}: the minimum is {hi}")


def check_memory(cut: LayerCut, size: int, batch: int, available: int) -> None:
    """Refuse, before allocating, a batch whose activations and their gradients cannot fit in
    `available` bytes (the forward pass keeps every layer's output for the backward pass)."""
    outputs = [layer.output for layer in cut.extractor.layers[1:]]
    shapes = keras.Model(cut.extractor.inputs, outputs).compute_output_shape((1, size, size, cut.channels))
    per_image = 4 * 2 * sum(math.prod(shape[1:]) for shape in shapes)  # float32, value and gradient
    need = per_image * batch
    if need > available:
        raise ConfigError(f"input_size={size} needs about {need / 2**30:.3g} GiB for a batch of {batch} image(s) "
                          f"at {cut.layer}, more than the {available / 2**30:.3g} GiB this machine can give: "
                          "use a smaller input_size or batch_size")


def activation_map(cut: LayerCut, size: int) -> tuple:
    """(height, width) of the layer's activation map for a `size`x`size` input."""
    return tuple(cut.extractor.compute_output_shape((1, size, size, cut.channels))[1:3])


def _reaches_layer(cut: LayerCut, size: int) -> bool:
    try:
        shape = cut.extractor.compute_output_shape((1, size, size, cut.channels))
    except ValueError:  # a pooling or valid convolution would produce an empty map
        return False
    return all(d is None or d > 0 for d in shape[1:3])


def _is_conv(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Conv2D)


def _load_file(path: Optional[str]) -> keras.Model:
    if not path:
        raise ConfigError("model=file needs model.path=<your .keras file>")
    if not Path(path).is_file():
        raise ConfigError(f"model file not found: {path} (model.path)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise ConfigError(f"could not load a Keras model from {path}: {first_line(e)}") from None


def _load_weights(model: keras.Model, weights: str, what: str) -> None:
    if not Path(weights).is_file():
        raise ConfigError(
            f"weights file not found: {weights} (model.weights takes imagenet, null or a path to a weights file)"
        )
    try:
        model.load_weights(weights)
    except Exception as e:
        raise ConfigError(f"could not load weights from {weights} into {what}: {first_line(e)}") from None

