"""Typed schema of the Hydra config, registered in the ConfigStore.

A wrong type in an override (``iters=abc``) fails in Hydra with its own message;
range checks that types cannot express live in :mod:`filterviz.job`.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

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
    layer: Optional[str] = "${model.default_layer}"
    # an index, a list [0,5,9], a range "0:16", "random", "random:N" or "all"
    filters: Any = 0
    iters: int = 100
    step_size: float = 10.0
    input_size: int = 96
    # filters optimised together in one batch; more filters are run in chunks
    batch_size: int = 16
    seed: int = 0
    precision: Precision = Precision.float32
    # bit-identical reruns (TensorFlow op determinism)
    deterministic: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="filterviz_schema", node=FilterVizConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
