"""The technique groups (`param`, `transforms`, `objective`, `optimizer`): each config names
the class it builds with `_target_`; `build` types its values against that class, then builds it."""

import dataclasses
import inspect

import hydra.utils
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from filterviz.errors import ConfigError, first_line

GROUPS = ("param", "transforms", "objective", "optimizer")


def build(cfg: DictConfig, group: str):
    """The object a technique group's `_target_` names, its values typed against that class first,
    so a wrong value fails in one line naming the key instead of deep inside TensorFlow."""
    node = cfg[group]
    target = hydra.utils.get_object(node._target_)
    _check_types(group, target, {k: v for k, v in node.items() if not k.startswith("_")})
    try:
        return hydra.utils.instantiate(node)
    except Exception as e:
        cause = e.__cause__ or e
        raise (cause if isinstance(cause, ConfigError) else ConfigError(f"{group}: {first_line(cause)}")) from None


def _check_types(group: str, target, values: dict) -> None:
    """A dataclass by its field types (OmegaConf's own check); another class, such as a Keras
    optimizer, by the types of its numeric and boolean defaults."""
    if dataclasses.is_dataclass(target):
        try:
            OmegaConf.merge(OmegaConf.structured(target), values)
        except ValidationError as e:
            raise ConfigError(f"{group}.{e.full_key}: {first_line(e)}") from None
        except ConfigKeyError as e:  # +param.nonsense=1: a key the class does not take
            fields = ", ".join(f.name for f in dataclasses.fields(target))
            takes = f"it takes {fields}" if fields else "it takes no settings"
            raise ConfigError(f"{group}.{e.full_key}: {target.__name__} has no such setting; {takes}") from None
        return
    for name, parameter in inspect.signature(target).parameters.items():
        default, value = parameter.default, values.get(name)
        if value is None or not isinstance(default, (bool, int, float)):
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (isinstance(value, bool) if isinstance(default, bool) else numeric) is False:
            raise ConfigError(f"{group}.{name}={value!r}: expected a {type(default).__name__} "
                              f"(default {default})")
