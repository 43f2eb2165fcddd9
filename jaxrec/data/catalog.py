"""Dataset catalogue: every dataset jaxrec can load, by name, through one validated path.

Each dataset family lives in ``jaxrec/data/builders/<family>.py`` and defines one
``tfds.core.GeneratorBasedBuilder`` subclass (ArrayRecord files; no TensorFlow) plus a call to
:func:`register` per dataset name it provides (e.g. ``llmcdsr/food_kitchen``). Users call :func:`load`,
:func:`info` and :func:`stats`; the CLI's ``jaxrec data stats NAME`` prints :func:`stats`.

Normalised record schemas (numpy dicts returned by the data source's ``__getitem__``):

* kind ``"sequence"`` (cross-domain and single-domain sequential recommendation; one record per
  (user, prediction point)):
    ``user_id``    int64 scalar   dataset-wide user id (0-based, unique across the whole dataset)
    ``items``      int64 [n]      chronological history, global item ids in 1..num_items (0 = padding, never stored)
    ``domains``    int32 [n]      domain index of each history item (0 for single-domain data)
    ``timestamps`` int64 [n]      unix seconds where the data has them, else positions 0..n-1
    ``target``     int64 scalar   the next item to predict (global id, 1..num_items)
    ``target_domain`` int32 scalar
    ``overlap``    bool scalar    user has interactions in both domains
  For the ``train`` split, ``target`` is the last item of the user's training sequence and ``items`` all
  before it, so next-item training at every position uses ``concat(items, [target])``.
* other kinds (``user_item``, ``graph``, ``reviews``, ``impressions``) document their schema in their
  builder module.

``info(name)`` returns the :class:`DatasetInfo` (item/user counts, domain item ranges, split sizes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from jaxrec.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One loadable dataset.

    Attributes:
      name: catalogue name, e.g. ``"llmcdsr/food_kitchen"``.
      kind: ``"sequence" | "user_item" | "graph" | "reviews" | "impressions"``.
      make_builder: ``(raw_dir: str | None, data_dir: str) -> tfds.core.DatasetBuilder``.
      raw_subdir: folder under the raw-data root, e.g. ``"llmcdsr/food-kitchen"``.
      licence: short licence statement (shown by ``jaxrec data stats``).
      internal_only: True for data whose licence forbids redistribution (MovieLens): never exported.
      source_stats: figures quoted from the dataset's SOURCE.md, checked by the tests.
    """

    name: str
    kind: str
    make_builder: Callable[[str | None, str], Any]
    raw_subdir: str
    licence: str
    internal_only: bool = False
    source_stats: dict = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _import_builders() -> None:
    import importlib
    import pkgutil

    import jaxrec.data.builders as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def names() -> list[str]:
    _import_builders()
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    _import_builders()
    if name not in _REGISTRY:
        raise DataError(name, "unknown dataset", expected=f"one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def builder(name: str, *, raw_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None):
    """The prepared TFDS builder for ``name`` (prepares ArrayRecord files on first use)."""
    from jaxrec.data import paths

    s = spec(name)
    data_dir = os.fspath(data_dir) if data_dir is not None else os.fspath(paths.tfds_dir())
    b = s.make_builder(None if raw_dir is None else os.fspath(raw_dir), data_dir)
    b.download_and_prepare()
    return b


def load(name: str, split: str, *, raw_dir=None, data_dir=None):
    """Random-access data source (``len``, ``__getitem__`` -> dict of numpy) for one split."""
    b = builder(name, raw_dir=raw_dir, data_dir=data_dir)
    if split not in b.info.splits:
        raise DataError(name, "unknown split", field="split", expected=f"one of {sorted(b.info.splits)}", got=split)
    return b.as_data_source(split=split)
