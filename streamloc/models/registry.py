"""One registry and one factory for every localization method.

>>> from streamloc.models import create_model, list_models
>>> "noprior" in list_models()
True
>>> model = create_model("noprior", visual_backbone="resnet18")
>>> model.method
'noprior'
"""

from __future__ import annotations

import importlib
from typing import Any

from streamloc.models.base import LocalizationModel, ModelConfig

# Modules that define the built-in methods (each registers itself on import). Adding a method
# means adding its file to this folder and its module name here.
_BUILTIN_MODULES = (
    "streamloc.models.ezvsl",
    "streamloc.models.noprior",
    "streamloc.models.mixloc",
    "streamloc.models.dsol",
    "streamloc.models.avgn",
)

_REGISTRY: dict[str, type[LocalizationModel]] = {}
_loaded = False


def register_model(cls: type[LocalizationModel]) -> type[LocalizationModel]:
    """Class decorator adding a `LocalizationModel` subclass under its `method` name."""
    name = cls.method
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
    _REGISTRY[name] = cls
    return cls


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a real missing dependency inside an existing method file
                    raise
        _loaded = True


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[LocalizationModel]:
    """The registered class for `name`; unknown names raise a ValueError listing the valid ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, config: ModelConfig | dict | None = None, **options: Any) -> LocalizationModel:
    """Build a registered model from a config dataclass, a dict, and/or keyword options.

    Keyword options override fields of `config`; nested `audio=` / `image=` options may be dicts.
    """
    cls = get_model_class(name)
    if config is None:
        data: dict = {}
    elif isinstance(config, dict):
        data = dict(config)
    elif isinstance(config, cls.config_class):
        data = config.to_dict()
    else:
        raise TypeError(f"config for {name!r} must be a {cls.config_class.__name__} or a dict, got {type(config).__name__}")
    # Nested options given as dicts (e.g. audio={"window_seconds": 1.0}) change only the fields they
    # name; the rest keeps this method's defaults (e.g. its log-mel front-end).
    merged = _merge(cls.config_class().to_dict(), _plain(data))
    return cls(cls.config_class.from_dict(_merge(merged, _plain(options))))


def _plain(data: dict) -> dict:
    return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in data.items()}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
