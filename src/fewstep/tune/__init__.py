"""Tuning a sampler to a model: :func:`tune` and its result, :class:`TunedSampler` (docs/tuning.md).

- :mod:`~fewstep.tune.tuned`: :class:`TunedSampler`, its JSON form, the model fingerprint and schedule description;
- :mod:`~fewstep.tune.teacher`: the high-NFE teacher solve;
- :mod:`~fewstep.tune.params`: the logSNR-increment parameterisation of the times;
- :mod:`~fewstep.tune.gits`, :mod:`~fewstep.tune.dmn`, :mod:`~fewstep.tune.ld3`: the optimisers;
- :mod:`~fewstep.tune.backprop`: a solver run differentiable with respect to its times (LD3's gradient);
- :mod:`~fewstep.tune.budget`: the network-call budget and the error minimised;
- :mod:`~fewstep.tune.hard`: :func:`hard_samples`, the noise few-step samplers send far from the teacher;
- :mod:`~fewstep.tune.strata`: the hard samples' flags and the weighted stratified calibration batch that
  ``tune(pool=...)`` draws;
- :mod:`~fewstep.tune.api`: :func:`tune`.

The names load on first use (PEP 562), so that :func:`fewstep.sample` can recognise a :class:`TunedSampler` without
importing the optimisers. The package itself is callable as :func:`tune` (``fewstep.tune(model, ...)``: the
package and the function share the name ``fewstep.tune``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import tune
    from .hard import hard_samples
    from .tuned import TunedSampler

_NAMES = {"tune": "api", "TunedSampler": "tuned", "hard_samples": "hard"}

__all__ = ["tune", "TunedSampler", "hard_samples"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`~fewstep.tune.api.tune`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module(f"{__name__}.api").tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
