"""``Network``: the innermost layer of the model-call stack, ``model(x, time, **kwargs)`` as one counted call.

The state is cast to the model's dtype (float16/bfloat16 models under a float32 solver state) and the output back;
the output's shape is checked and its finiteness too: at once on the CPU, and on accelerators without a
host-device synchronisation (the flags are read once, by :meth:`Network.raise_if_nonfinite`, after the run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .calls import CallCount


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


class Network:
    """The user's ``model`` with its conditioning ``kwargs``, counted in ``calls`` (a run's :class:`CallCount`)."""

    def __init__(
        self,
        model: Callable[..., Tensor],
        kwargs: Mapping[str, Any],
        model_dtype: torch.dtype | None,
        calls: CallCount,
    ):
        self.model, self.kwargs, self.model_dtype, self.calls = model, kwargs, model_dtype, calls
        self._pending: list[tuple[int, float, Tensor]] = []

    def __call__(
        self, x: Tensor, time: Tensor, t: float, kwargs: Mapping[str, Any] | None = None, branches: int = 1
    ) -> Tensor:
        """The network's output at ``x`` (state dtype), called at model time ``time`` with ``kwargs`` (default: the
        conditioning given); ``t`` is the schedule time (for error messages) and ``branches`` the number of branch
        evaluations batched into this one call."""
        dtype = self.model_dtype or x.dtype
        out = self.model(x if x.dtype == dtype else x.to(dtype), time, **(self.kwargs if kwargs is None else kwargs))
        self.calls.network += 1
        self.calls.branches += branches
        if out.shape != x.shape:
            raise ValueError(f"model: returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
        self._check_finite(out, t)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _check_finite(self, out: Tensor, t: float) -> None:
        if out.is_cpu:  # no device sync to avoid: check at once
            # The sum is non-finite whenever an element is, and costs a fraction of isfinite().all() on the CPU;
            # a huge finite output can overflow it, so the elementwise check confirms before raising.
            if not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
                raise NonFiniteModelOutput(f"model: returned NaN/inf at evaluation {self.calls.network} (t = {t:.6g})")
        else:  # accelerators: record without a host-device sync, checked once after the loop
            self._pending.append((self.calls.network, t, torch.isfinite(out).all()))

    def raise_if_nonfinite(self) -> None:
        """Raise for the first deferred non-finite evaluation (accelerator devices)."""
        if self._pending:
            flags = torch.stack([ok for _, _, ok in self._pending]).cpu()
            bad = (~flags).nonzero()
            pending, self._pending = self._pending, []
            if len(bad):
                n, t, _ = pending[int(bad[0])]
                raise NonFiniteModelOutput(f"model: returned NaN/inf at evaluation {n} (t = {t:.6g})")
