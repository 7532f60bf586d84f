"""Value keys and a small cache for the pure, host-side part of a run's plan.

A run's node table (the schedule at the node times, the conversion coefficients, the model's time values) and a
solver's plan on it (step orders, update coefficients) are pure functions of numbers: the schedule's state, the
prediction type, the node times and the solver's options. Runs that repeat the same settings (a pipeline that
samples batch after batch) look them up instead of computing them again.

Keys are made of the values themselves (:func:`value_key`, :func:`state_key`), never of an object's identity: a
schedule, an option or a time array changed in place makes a new key, so nothing cached can go stale. An object
whose state is not plain values (a callable, a model, an arbitrary object) has no key and is not cached. Cached
entries hold host values, and the model-time tensors of the last runs on a device
(:meth:`fewstep.model.denoiser.PointValues.points`): those are handed out again only while no model has written
into them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import numpy as np
import torch

__all__ = ["MAX_ELEMENTS", "ValueCache", "clear_caches", "state_key", "value_key"]

#: Arrays and tensors with more elements than this have no value key (hashing them would cost more than it saves).
MAX_ELEMENTS = 1 << 14

V = TypeVar("V")


_PLAIN = (int, str, bool, type(None), torch.dtype)


def value_key(value: object) -> Hashable | None:
    """A hashable key equal for equal values: numbers (with the sign of a float, so that 0.0 and -0.0 differ),
    strings, None, dtypes, tuples and lists of those, and numpy arrays or CPU tensors by dtype, shape and bytes;
    None for anything else."""
    kind = type(value)
    if isinstance(value, float):
        return (kind, value, math.copysign(1.0, value))
    if kind in _PLAIN:
        return (kind, value)
    if kind is tuple or kind is list:
        keys = tuple(value_key(v) for v in value)  # type: ignore[attr-defined]
        return None if None in keys else (kind, keys)
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.requires_grad or value.dtype == torch.bfloat16:
            return None
        value = value.numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= MAX_ELEMENTS:
        return (np.ndarray, value.dtype.str, value.shape, value.tobytes())
    return None


def state_key(obj: object, *class_attributes: str) -> Hashable | None:
    """The key of an object by its class, its instance state (``vars``) and the named class-level attributes; None
    when any of them has no :func:`value_key`."""
    state = getattr(obj, "__dict__", None)
    if state is None:
        return None
    items = [*state.items(), *((name, getattr(obj, name, None)) for name in class_attributes)]
    keys = tuple((name, value_key(v)) for name, v in items)
    if any(k is None for _, k in keys):
        return None
    return (type(obj), keys)


class ValueCache(Generic[V]):
    """A least-recently-used map from value keys to host-side plans, of at most ``size`` entries (safe to share
    between threads)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        _CACHES.append(self)

    def get(self, key: Hashable | None) -> V | None:
        """The entry of ``key`` (None: no entry, or no key)."""
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable | None, entry: V) -> V:
        """Keep ``entry`` under ``key`` (nothing is kept without a key); returns ``entry``."""
        if key is not None:
            with self._lock:
                self._entries[key] = entry
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_CACHES: list[ValueCache[Any]] = []


def clear_caches() -> None:
    """Empty every :class:`ValueCache` (the next runs compute their plans afresh)."""
    for cache in _CACHES:
        cache.clear()
