"""Configs as code: ``get_config()`` returning an ``ml_collections.ConfigDict``, with command-line overrides.

An experiment is a Python file (``experiments/sasrec_kuairand.py``) or a packaged config name
(``jaxrec.configs.NAME``, e.g. ``sasrec_embedded``) exposing ``get_config(arg: str | None = None)``.
``load_config("path.py:arg", ["--config.optimizer.lr=3e-4"])`` imports it, calls ``get_config(arg)``,
locks the dict (so a typo cannot silently add a key), applies the overrides and validates the result.

Every problem raises :class:`ConfigError` with one line naming the config key and what was expected.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import pathlib

import ml_collections


class ConfigError(ValueError):
    """A bad or missing config key/value; the message names the key."""


def _import_config_module(spec: str):
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = pathlib.Path(spec)
        if not path.is_file():
            raise ConfigError(f"config file {spec!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_jaxrec_config_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(f"jaxrec.configs.{spec}")
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(spec):
            raise ConfigError(f"unknown config {spec!r}: expected a .py file or one of {packaged_configs()}") from None
        raise


def packaged_configs() -> list[str]:
    import pkgutil

    import jaxrec.configs as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def _parse_value(key: str, text: str, current):
    """Parse ``text`` to the type of the existing value ``current`` (ml_collections' typing)."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key!r}: expected a bool (true/false), got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected a float, got {text!r}") from None
    if isinstance(current, str):
        return text
    if current is None or isinstance(current, (tuple, list, dict)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text
            raise ConfigError(f"config key {key!r}: expected a Python literal "
                              f"({type(current).__name__}), got {text!r}") from None
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        return value
    raise ConfigError(f"config key {key!r}: cannot override a value of type {type(current).__name__}")


def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_all_keys(v, full + "."))
    return out


def apply_override(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``cfg.<key> = text`` (dotted key), parsed to the existing value's type."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = _all_keys(cfg)
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; set one of its fields, e.g. {key}.{next(iter(current.keys()), '...')}")
    with node.unlocked():
        node[parts[-1]] = _parse_value(key, text, current)


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """``["--config.a.b=1", "--config.c", "2"]`` -> ``[("a.b", "1"), ("c", "2")]``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --config.KEY=VALUE")
        body = arg[len("--config."):]
        if "=" in body:
            k, v = body.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"config key {body!r}: missing value")
            k, v = body, argv[i + 1]
            i += 1
        out.append((k, v))
        i += 1
    return out


def load_config(spec: str, overrides: list[str] | list[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Import ``spec`` (``file.py[:arg]`` or packaged name), apply overrides, validate, and return it locked."""
    arg = None
    if ":" in spec and not (len(spec) > 1 and spec[1] == ":"):
        spec, arg = spec.split(":", 1)
    module = _import_config_module(spec)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {spec!r} defines no get_config()")
    cfg = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"config {spec!r}: get_config() must return an ml_collections.ConfigDict")
    cfg.lock()
    pairs = overrides
    if overrides and isinstance(overrides[0], str):
        pairs = parse_overrides(list(overrides))
    for k, v in pairs:
        apply_override(cfg, k, v)
    validate(cfg)
    return cfg


REQUIRED_KEYS = ("model.name", "task.name", "data.name", "train.batch_size", "train.seed", "optimizer.name",
                 "optimizer.learning_rate")


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"missing config key {key!r}")
        node = node[part]
    return node


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Early, one-line errors for the keys every training config needs."""
    for key in REQUIRED_KEYS:
        _get(cfg, key)
    for key in ("train.batch_size", "eval.batch_size"):
        try:
            v = _get(cfg, key)
        except ConfigError:
            continue
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"config key {key!r}: expected a positive int, got {v!r}")
    lr = _get(cfg, "optimizer.learning_rate")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"config key 'optimizer.learning_rate': expected a positive number, got {lr!r}")
    for key in ("train.num_epochs", "train.num_steps"):
        try:
            v = _get(cfg, key)
        except ConfigError:
            continue
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ConfigError(f"config key {key!r}: expected a non-negative int or None, got {v!r}")
