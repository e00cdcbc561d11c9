"""Typed schema of the Hydra config, registered in the ConfigStore.

A wrong type in an override (``iters=abc``) fails in Hydra with its own message;
range checks that types cannot express live in :mod:`filterviz.job`.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Precision(Enum):
    # float32: bit-identical to the notebooks. bfloat16: Keras mixed precision (weights and
    # image stay float32), about 2x faster where the CPU or GPU computes in bfloat16.
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class ModelConfig:
    # vgg16 | vgg19 | resnet50 (keras.applications) or file (a saved Keras model)
    name: str = MISSING
    # "imagenet" (Keras download/cache), null (random init) or a weights file path
    weights: Optional[str] = "imagenet"
    # the .keras file, for name=file
    path: Optional[str] = None
    # the layer used when `layer` is not given
    default_layer: Optional[str] = None


class Squash(Enum):
    sigmoid = "sigmoid"
    clip = "clip"


# group `param` (filterviz/params.py)
@dataclass
class PixelConfig:
    name: str = "pixel"
    init_value: float = 0.5
    noise: float = 0.0


@dataclass
class FourierConfig:
    name: str = "fourier"
    decay: float = 1.0
    decorrelate: bool = True
    squash: Squash = Squash.sigmoid
    std: float = 0.01


# group `transforms`: mirrors transforms.Transforms, which cannot be the schema itself
# because importing it loads TensorFlow before Hydra has even parsed the command line
@dataclass
class TransformsConfig:
    pad: int = 0
    pad_value: float = 0.5
    jitter: int = 0
    scale: Optional[List[float]] = None
    rotate: float = 0.0
    jitter_after: int = 0
    blur: float = 0.0


# group `objective` (filterviz/objectives.py)
@dataclass
class ObjectiveConfig:
    # a weighted sum of terms: channel, neuron, layer, direction, diversity, l1, l2, tv, blur
    expr: str = "channel"
    copies: int = 1  # images per filter; diversity needs 2 or more
    border: int = 0  # activation-map pixels left out at each edge
    direction: Optional[List[float]] = None  # for `direction`; null: a seeded random vector


@dataclass
class RegularizersConfig:
    # weights of penalties subtracted from the objective
    l1: float = 0.0
    l2: float = 0.0
    tv: float = 0.0
    blur: float = 0.0


# group `optimizer` (filterviz/optimizers.py)
@dataclass
class L2StepConfig:
    name: str = "l2_step"


@dataclass
class AdamConfig:
    name: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI, else SQLite at ./mlruns/mlflow.db
    uri: Optional[str] = None
    experiment: str = "filterviz"
    # extra tags for the run: tracking.tags.note=baseline
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass
class FilterVizConfig:
    model: ModelConfig = MISSING
    tracking: TrackingConfig = MISSING
    param: Any = MISSING
    transforms: TransformsConfig = MISSING
    objective: ObjectiveConfig = MISSING
    optimizer: Any = MISSING
    regularizers: RegularizersConfig = field(default_factory=RegularizersConfig)
    layer: Optional[str] = "${model.default_layer}"
    # an index, a list [0,5,9], a range "0:16", "random", "random:N" or "all"
    filters: Any = 0
    iters: int = 100
    step_size: float = 10.0
    input_size: int = 96
    # filters optimised together in one batch; more filters are run in chunks
    batch_size: int = 16
    seed: int = 0
    # feed the model its own preprocessing of the [0, 1] image (VGG/ResNet: BGR, mean-subtracted)
    preprocess: bool = True
    # filters that never fire are retried this many times from a new random start
    retry_dead: int = 0
    # save an animated GIF of the ascent of one filter (gif_filter; null: the first)
    save_gif: bool = False
    gif_filter: Optional[int] = None
    precision: Precision = Precision.float32
    # bit-identical reruns (TensorFlow op determinism)
    deterministic: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="filterviz_schema", node=FilterVizConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    cs.store(group="param", name="pixel_schema", node=PixelConfig)
    cs.store(group="param", name="fourier_schema", node=FourierConfig)
    cs.store(group="transforms", name="transforms_schema", node=TransformsConfig)
    cs.store(group="objective", name="objective_schema", node=ObjectiveConfig)
    cs.store(group="optimizer", name="l2_step_schema", node=L2StepConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
