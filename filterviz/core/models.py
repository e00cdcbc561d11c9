"""Load a network and cut it at the layer whose channels (filters, units) we visualise.

Any layer with a channel axis can be cut at: a (batch, height, width, channels) output (every
convolution kind, a Dense on a 4-D tensor, an activation, a normalization, a residual Add) or
a (batch, units) one (Dense units, class logits). The atlas covers the convolutions by default.
"""

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import keras
import numpy as np

from filterviz.core import applications
from filterviz.errors import ConfigError, first_line

MODEL_NAMES = sorted(applications.APPLICATIONS) + ["file"]


# Layers that hold filters: an atlas covers these by default (and Dense on a 4-D tensor, ConvNeXt's
# pointwise convolutions).
CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
                keras.layers.Conv2DTranspose)


@dataclass
class LayerCut:
    """A model truncated at one layer with channels; a (batch, units) output is cut as
    (batch, 1, 1, units), so every objective reads it as a 1x1 map."""

    extractor: keras.Model
    layer: str
    n_filters: int
    channels: int


def load_model(name: str, weights: Optional[str] = "imagenet", path: Optional[str] = None,
               precision: str = "float32", include_top: bool = False, store: Optional[str] = None) -> keras.Model:
    """A model by `name`: a keras.applications network or, for `file`, a saved Keras model.

    `precision="bfloat16"` builds it under Keras' mixed_bfloat16 policy: float32 weights,
    bfloat16 arithmetic.
    """
    if precision != "float32":
        if name == "file":
            raise ConfigError("precision=bfloat16 applies to the named applications; a saved model keeps its own")
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(f"mixed_{precision}")
        try:
            return load_model(name, weights, path, include_top=include_top, store=store)
        finally:
            keras.config.set_dtype_policy(previous)
    if name == "file":
        if weights == "imagenet":
            raise ConfigError("model=file has no ImageNet weights: model.weights takes null (the file's own) or a path")
        model = _load_file(path, store)
        if weights is not None:
            _load_weights(model, weights, "the model in " + str(path))
        return model
    if name not in applications.APPLICATIONS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")

    def build(weights_arg):
        """Without a fixed input size, so one model serves every `input_size`; with its top (class
        logits), at the size it was trained at."""
        shape = None if include_top else (None, None, 3)
        return applications.builder(name)(include_top=include_top, weights=weights_arg, input_shape=shape)

    if weights == "imagenet":
        try:
            return build("imagenet")
        except Exception as e:  # Keras raises plain Exception on a failed download
            raise ConfigError(
                f"could not get the ImageNet weights of {name} ({first_line(e)}); without network, "
                f"pass a weights file: model.weights=<path to {name} .weights.h5>"
            ) from None
    try:
        model = build(None)
    except ValueError as e:  # e.g. a size the application refuses
        raise ConfigError(f"could not build {name}: {first_line(e)}") from None
    if weights is not None:
        _load_weights(model, weights, name)
    return model


# Keras' imagenet_utils modes: caffe (BGR, mean-subtracted 0..255: VGG, ResNet), tf ([-1, 1]),
# torch ([0, 1] standardised by ImageNet's mean and std); none: the [0, 1] picture as it is.
PREPROCESS_MODES = ("none", "caffe", "tf", "torch")


def preprocess_mode(model: str, given: Optional[str]) -> str:
    """What the model is fed: `given` (a mode or an application's name), else the application's
    own (a saved model: none)."""
    mode = given if given is not None else model if model in applications.APPLICATIONS else "none"
    if mode not in PREPROCESS_MODES and mode not in applications.APPLICATIONS:
        raise ConfigError(f"model.preprocess={mode}: use {', '.join(PREPROCESS_MODES)} or an application's name "
                          "(vgg16, mobilenetv2, efficientnetb0, ...: any model=<name>)")
    return mode


def preprocessor(mode: str, channels: int = 3) -> Optional[Callable]:
    """[0, 1] images -> what the model was trained on, in the graph: a mode of `preprocess_mode`.
    None for `none`: the [0, 1] picture as it is."""
    if mode == "none":
        return None
    if channels != 3 and mode != "tf":
        raise ConfigError(f"model.preprocess={mode} is for RGB images and this model takes {channels} channel(s): "
                          "use model.preprocess=tf or none")
    if mode in applications.APPLICATIONS:
        preprocess_input = applications.preprocess_input(mode)
        return lambda images: preprocess_input(images * 255.0)
    return lambda images: keras.applications.imagenet_utils.preprocess_input(images * 255.0, mode=mode)


def fingerprint(model: keras.Model) -> str:
    """A digest of the network: its architecture and every weight, so that the runs of one
    network can be found together whatever its file or its name."""
    import json

    digest = hashlib.sha256()
    for layer in model.layers:  # each layer's kind, name and settings; not names Keras numbers per session
        own = {k: v for k, v in layer.get_config().items() if k != "name"}
        name = "" if isinstance(layer, keras.layers.InputLayer) else layer.name
        digest.update(json.dumps([type(layer).__name__, name, own], sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def conv_layer_names(model: keras.Model) -> List[str]:
    """The layers that hold filters: every convolution kind, and Dense on a 4-D tensor."""
    return [layer.name for layer in model.layers if _is_conv(layer)]


def channel_layer_names(model: keras.Model) -> List[str]:
    """Every layer that can be visualised: its output has a channel axis."""
    return [layer.name for layer in model.layers if _output_rank(layer) in (2, 4)
            and not isinstance(layer, keras.layers.InputLayer)]


@dataclass(frozen=True)
class ConvLayer:
    name: str
    filters: int  # its channels: filters or units
    cost: float  # multiply-adds of one image's forward pass from the input to this layer's output
    convolution: bool = True  # one that holds filters (conv_layer_names); else any layer with channels


def channel_layers(model: keras.Model, size: int) -> List[ConvLayer]:
    """Every layer with channels of `model`, in order, with the cost of reaching it at `size`x`size`
    (the layers before it in the model's layer order: exact for a chain, an upper bound otherwise)."""
    names = set(channel_layer_names(model))
    chosen = [layer for layer in model.layers if layer.name in names]
    if not chosen:
        return []
    shapes = keras.Model(model.inputs, [layer.output for layer in chosen]).compute_output_shape(
        (1, size, size, int(model.input_shape[-1])))
    total, found = 0.0, []
    for layer, shape in zip(chosen, shapes if isinstance(shapes, (list, tuple)) and len(chosen) > 1 else [shapes]):
        total += _multiply_adds(layer, shape)
        found.append(ConvLayer(layer.name, int(shape[-1]), total, _is_conv(layer)))
    return found


def conv_layers(model: keras.Model, size: int) -> List[ConvLayer]:
    """The convolutions among `channel_layers`: what an atlas covers by default."""
    return [layer for layer in channel_layers(model, size) if layer.convolution]


def _multiply_adds(layer: keras.layers.Layer, shape) -> float:
    """One image's multiply-adds in `layer`, whose output has `shape`: each kernel weight is used
    once per output pixel (a transposed convolution's once per input pixel; a grouped kernel holds
    only its group's inputs)."""
    weights = sum(math.prod(w.shape) for w in layer.weights if len(w.shape) > 1)  # kernels, not biases
    per_pixel = weights / math.prod(layer.strides) if isinstance(layer, keras.layers.Conv2DTranspose) else weights
    return math.prod(shape[1:-1]) * per_pixel  # a (batch, units) output is one "pixel"


def cut_at(model: keras.Model, layer_name: Optional[str]) -> LayerCut:
    """Truncate `model` so that it outputs the activations of the layer `layer_name`. A softmax
    layer is cut before its softmax, at the logits: a softmax output rises as much by pushing the
    other classes down as by raising its own (xplique and tf-keras-vis advise the same)."""
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4):
        raise ConfigError(f"{model.name} takes inputs of shape {shape}, not one image batch (batch, height, width, "
                          "channels): filterviz visualises networks of images")
    convs = conv_layer_names(model)
    qualifying = channel_layer_names(model)
    if not qualifying:
        raise ConfigError(f"{model.name} has no layer to visualise: no layer has a (batch, height, width, channels) "
                          "or (batch, units) output")
    if layer_name is None:
        raise ConfigError(f"no layer given: pass layer=<name>, one of {', '.join(convs or qualifying)}")
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        listed = f"conv layers are {', '.join(convs)}" if convs else f"layers with channels are {', '.join(qualifying)}"
        raise ConfigError(f"unknown layer {layer_name!r} in {model.name}: {listed}")
    layer = model.get_layer(layer_name)
    if layer_name not in qualifying:
        raise ConfigError(
            f"layer {layer_name!r} is a {type(layer).__name__} with output {_output_shape(layer)}, no channel axis: "
            f"use one of {', '.join(qualifying)}")
    output = _logits(layer)
    if len(output.shape) == 2:
        output = keras.layers.Reshape((1, 1, int(output.shape[-1])), name=f"{layer_name}_as_map")(output)
    extractor = keras.Model(model.inputs, output, name=f"{model.name}_to_{layer_name}")
    return LayerCut(extractor, layer_name, int(output.shape[-1]), int(model.input_shape[-1]))


def _logits(layer: keras.layers.Layer):
    """The layer's output, or for a softmax the input of the softmax (the logits)."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation) and config.get("activation") == "softmax"):
        return layer.input
    if config.get("activation") == "softmax":  # a Dense (or convolution) with a softmax of its own
        twin = type(layer).from_config({**config, "activation": "linear", "name": f"{layer.name}_logits"})
        logits = twin(layer.input)
        twin.set_weights(layer.get_weights())
        return logits
    return layer.output


def _output_rank(layer: keras.layers.Layer) -> Optional[int]:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used twice has no single output
        return None


def _output_shape(layer: keras.layers.Layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return "(several)"


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
    return isinstance(layer, CONVOLUTIONS) or (isinstance(layer, keras.layers.Dense) and _output_rank(layer) == 4)


MLFLOW_URIS = ("models:/", "runs:/", "mlflow-artifacts:/")  # a model logged with MLflow, in its store


def _load_file(path: Optional[str], store: Optional[str] = None) -> keras.Model:
    if not path:
        raise ConfigError("model=file needs model.path=<your .keras file>")
    if path.startswith(MLFLOW_URIS):
        return _load_logged(path, store)
    if not Path(path).is_file():
        raise ConfigError(f"model file not found: {path} (model.path)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise ConfigError(f"could not load a Keras model from {path}: {first_line(e)}") from None


def _load_logged(uri: str, store: Optional[str]) -> keras.Model:
    """A Keras model logged with MLflow's own model logging (mlflow.keras / mlflow.tensorflow), by
    its URI in the store `store` (the run's): downloaded, then loaded from the .keras file in it."""
    import tempfile

    import mlflow

    # MLflow resolves a models:/ URI in its registry and then the logged model in a tracking store,
    # both read from its environment (the tracking_uri argument does not reach them): the run's store
    saved = {name: os.environ.get(name) for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI")}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if store:
                os.environ.update(dict.fromkeys(saved, store))
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store))
        except Exception as e:
            raise ConfigError(f"could not fetch the MLflow model {uri} from {store}: {first_line(e)}") from None
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        found = sorted(folder.rglob("*.keras"))
        if not found:
            raise ConfigError(f"the MLflow model {uri} holds no .keras file (log it with mlflow.keras.log_model)")
        return _load_file(str(found[0]))


def _load_weights(model: keras.Model, weights: str, what: str) -> None:
    if not Path(weights).is_file():
        raise ConfigError(
            f"weights file not found: {weights} (model.weights takes imagenet, null or a path to a weights file)"
        )
    try:
        model.load_weights(weights)
    except Exception as e:
        raise ConfigError(f"could not load weights from {weights} into {what}: {first_line(e)}") from None

