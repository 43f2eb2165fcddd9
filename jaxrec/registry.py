"""Registries: models and tasks by name, so a config names a model and nothing else changes.

``@register_model("sasrec")`` on a ``flax.linen.Module`` class; ``@register_task("seqrec")`` on a factory
``(config, dataset_info) -> Task``. Model files live in ``jaxrec/models/`` and are imported on first lookup.
"""

from __future__ import annotations

from typing import Callable

_MODELS: dict[str, type] = {}
_TASKS: dict[str, Callable] = {}


def register_model(name: str):
    def deco(cls):
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = cls
        return cls

    return deco


def register_task(name: str):
    def deco(fn):
        if name in _TASKS and _TASKS[name] is not fn:
            raise ValueError(f"task {name!r} registered twice")
        _TASKS[name] = fn
        return fn

    return deco


def _import_models() -> None:
    import importlib
    import pkgutil

    import jaxrec.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def get_model(name: str) -> type:
    _import_models()
    if name not in _MODELS:
        from jaxrec.config import ConfigError

        raise ConfigError(f"config key 'model.name': unknown model {name!r}; expected one of {sorted(_MODELS)}")
    return _MODELS[name]


def get_task(name: str) -> Callable:
    _import_models()
    if name not in _TASKS:
        from jaxrec.config import ConfigError

        raise ConfigError(f"config key 'task.name': unknown task {name!r}; expected one of {sorted(_TASKS)}")
    return _TASKS[name]


def model_names() -> list[str]:
    _import_models()
    return sorted(_MODELS)


def task_names() -> list[str]:
    _import_models()
    return sorted(_TASKS)
