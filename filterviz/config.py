"""Typed schema of the Hydra config, registered in the ConfigStore.

A wrong type in an override (``iters=abc``) fails in Hydra with its own message. The
technique groups (`param`, `transforms`, `objective`, `optimizer`) name the class they build
with `_target_`; their values are typed against that class when the job builds it
(`groups.build`), so the schema does not repeat them. Values live in conf/config.yaml and the
group files, not here. `check_ranges` says what types cannot, before TensorFlow is imported.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from filterviz.core.applications import APPLICATIONS
from filterviz.core.hardware import fastest_precision, xla_is_faster
from filterviz.errors import ConfigError


MODEL_FILES = ("vgg16", "vgg19", "resnet50", "file")  # conf/model/*.yaml


class Precision(Enum):
    # float32: bit-identical to the notebooks. bfloat16: Keras mixed precision (weights and
    # image stay float32), faster only where the CPU or GPU computes in bfloat16.
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
    # with the application's top (its class logits, at the input size it was trained at)
    include_top: bool = False
    # what the model was trained on, applied when `preprocess` is true: none, caffe, tf, torch or an
    # application's name; null: the application's own (a saved model: none, the [0, 1] picture)
    preprocess: Optional[str] = None


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI, else SQLite at ./mlruns/mlflow.db
    uri: Optional[str] = None
    experiment: str = "filterviz"
    # extra tags for the run: tracking.tags.note=baseline
    tags: Dict[str, str] = field(default_factory=dict)
    # images with their own metric series and picture slider in MLflow (the first N); every
    # image's figures are in the run's filters table either way
    filter_series: int = 16


@dataclass
class AtlasConfig:
    # all, a layer name, a shell pattern (block[45]_*) or a list of them
    layers: Any = "all"
    # filters per job; null: sized by each layer's cost
    chunk: Optional[int] = None
    # the first N filters of each layer (a quick look, or a benchmark); null: every filter
    per_layer: Optional[int] = None
    # random views the quality figures average over (a run's: 16)
    views: int = 4


@dataclass
class ExamplesConfig:
    """A pass over a folder of images for each filter's top natural images (`exemplars.data=` on a run
    or an atlas; `python -m filterviz.exemplars` takes these keys at the top level)."""
    # the folder of images (read in it and below); null: no dataset examples
    data: Optional[str] = None
    # top images per filter
    k: int = 9
    # and one image at each of these quantiles of the filter's activation over the images
    quantiles: List[float] = field(default_factory=lambda: [0.99, 0.9, 0.5])
    # images per forward pass
    batch_size: int = 32
    # a checkpoint of the pass this often (and on a stop signal), for the same command to resume from
    checkpoint_seconds: float = 30.0
    # where passes keep their checkpoints, by what they compute (folder, model, layers, sizes)
    checkpoints: str = "exemplars"


@dataclass
class ExemplarsAppConfig(ExamplesConfig):
    """`python -m filterviz.exemplars` (conf/exemplars.yaml)."""
    model: ModelConfig = MISSING
    tracking: TrackingConfig = MISSING
    data: Optional[str] = MISSING
    # all (every convolution), a layer, a shell pattern (block[45]_*) or a list of them
    layers: Any = "all"
    input_size: int = MISSING
    preprocess: bool = MISSING
    precision: Precision = MISSING
    deterministic: bool = True
    # the pass in this many shards, each a job of Hydra's launcher (joblib, SLURM), merged at the end
    shards: int = 1
    shard: int = 0  # set for each job


@dataclass
class FilterVizConfig:
    model: ModelConfig = MISSING
    tracking: TrackingConfig = MISSING
    param: Any = MISSING
    transforms: Any = MISSING
    objective: Any = MISSING
    optimizer: Any = MISSING
    layer: Optional[str] = MISSING
    filters: Any = MISSING  # an index, a list [0,5,9], a range "0:16", "random", "random:N" or "all"
    iters: int = MISSING
    step_size: float = MISSING
    input_size: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    preprocess: bool = MISSING
    retry_dead: int = MISSING
    save_gif: bool = MISSING
    gif_filter: Optional[int] = MISSING
    precision: Precision = MISSING
    deterministic: bool = MISSING
    xla: bool = False  # set by config.yaml; False for records made before it, so they replay as they ran
    optimized_metric: str = MISSING
    preset: Optional[str] = MISSING  # set by the preset (experiment=...) the run starts from
    atlas: Optional[AtlasConfig] = None  # set by python -m filterviz.atlas (conf/atlas.yaml)
    exemplars: ExamplesConfig = field(default_factory=ExamplesConfig)  # dataset examples beside the pictures


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="filterviz_schema", node=FilterVizConfig)
    cs.store(name="exemplars_schema", node=ExemplarsAppConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    # model=<any keras.applications network>; those with a file in conf/model/ name their default layer
    for name in APPLICATIONS:
        if name not in MODEL_FILES:
            cs.store(group="model", name=name, node=ModelConfig(name=name))
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    # conf/config.yaml's `xla: ${xla_is_faster:}`: read from the CPU once per config, and logged resolved
    OmegaConf.register_new_resolver("xla_is_faster", xla_is_faster, replace=True, use_cache=True)
    # and `precision: ${fastest_precision:${model.name}}`, likewise
    OmegaConf.register_new_resolver("fastest_precision", fastest_precision, replace=True, use_cache=True)


def check_ranges(cfg: DictConfig) -> None:
    """The range checks a type cannot express; each error says what would be right."""
    if cfg.iters < 1:
        raise ConfigError(f"iters={cfg.iters}: the number of iterations must be at least 1")
    if not cfg.step_size > 0:
        raise ConfigError(f"step_size={cfg.step_size}: the step size must be greater than 0, e.g. step_size=10")
    if cfg.input_size < 1:
        raise ConfigError(f"input_size={cfg.input_size}: the image side must be a positive number of pixels")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}: at least 1 filter per batch")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed}: a seed is a whole number from 0 to 4294967295")
    if cfg.get("exemplars") and cfg.exemplars.data is not None:
        check_examples(cfg.exemplars, "exemplars.")
    if cfg.get("atlas") and cfg.atlas.views < 1:
        raise ConfigError(f"atlas.views={cfg.atlas.views}: the quality figures average over at least 1 random view")
    if cfg.tracking.get("filter_series", 0) < 0:
        raise ConfigError(f"tracking.filter_series={cfg.tracking.filter_series}: the number of filters charted "
                          "one by one in MLflow is 0 or more")


def check_examples(cfg: DictConfig, prefix: str = "") -> None:
    """The dataset examples' range checks; `prefix`: where the keys are (exemplars. on a run)."""
    if cfg.k < 1:
        raise ConfigError(f"{prefix}k={cfg.k}: at least 1 top image per filter")
    if any(not 0 <= q <= 1 for q in cfg.quantiles):
        raise ConfigError(f"{prefix}quantiles={list(cfg.quantiles)}: quantiles are fractions from 0 to 1, "
                          "e.g. [0.99,0.9,0.5]")
    if cfg.batch_size < 1:
        raise ConfigError(f"{prefix}batch_size={cfg.batch_size}: at least 1 image per batch")
    if "shards" in cfg and not 0 <= cfg.shard < cfg.shards:
        raise ConfigError(f"shards={cfg.shards} shard={cfg.shard}: shards is 1 or more, and shard one of 0..shards-1")
    if "input_size" in cfg and cfg.input_size < 1:
        raise ConfigError(f"input_size={cfg.input_size}: the image side must be a positive number of pixels")
