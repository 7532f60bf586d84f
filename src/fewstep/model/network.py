"""``Network``: the innermost layer of the model-call stack, ``model(x, time, **kwargs)`` as one counted call.

The state is cast to the model's dtype (float16/bfloat16 models under a float32 solver state) and the output back;
the output's shape is checked. With ``check_finite="each"`` every output's finiteness is checked too: at once on the
CPU, and on accelerators without a host-device synchronisation (the flags are read once, by
:meth:`Network.raise_if_nonfinite`, after the run). With ``"end"`` (the default of :func:`fewstep.sample`) only the
run's result is checked (:meth:`fewstep.model.ModelStack.finish`), which saves a reduction over the state per call.

Outputs are passed on uncopied where the conversion is the identity, and multistep solvers keep them across calls
(they never write into them): a model must return a new tensor at each call, as PyTorch modules do. An output that
shares memory with the input state (a model that returns its input, or a view of it) is copied here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ..finite import all_finite
from .calls import CallCount

#: When model outputs are checked for NaN/inf: every evaluation, or the run's result only.
CheckFinite = Literal["each", "end"]
CHECK_FINITE: tuple[str, ...] = ("each", "end")


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
        check_finite: CheckFinite = "each",
        label: str = "",
    ):
        if check_finite not in CHECK_FINITE:
            raise ValueError(f"check_finite: choose 'each' or 'end', got {check_finite!r}")
        self.model, self.kwargs, self.model_dtype, self.calls = model, kwargs, model_dtype, calls
        self.label = label  # what runs the network (a solver's name), for messages
        self.check_each = check_finite == "each"
        self._pending: list[tuple[int, float, Tensor]] = []

    def __call__(
        self, x: Tensor, time: Tensor, t: float, kwargs: Mapping[str, Any] | None = None, branches: int = 1
    ) -> Tensor:
        """The network's output at ``x`` (state dtype), called at model time ``time`` with ``kwargs`` (default: the
        conditioning given); ``t`` is the schedule time (for error messages) and ``branches`` the number of branch
        evaluations batched into this one call."""
        cast = self.model_dtype is not None and x.dtype != self.model_dtype
        try:
            out = self.model(x.to(self.model_dtype) if cast else x, time, **(self.kwargs if kwargs is None else kwargs))
        except Exception as e:  # the model's own error, with where it happened
            if hasattr(e, "add_note"):  # Python >= 3.11
                e.add_note(f"fewstep: raised by the model at evaluation {self.calls.network + 1}{self._where(t)}")
            raise
        self.calls.network += 1
        self.calls.branches += branches
        if not isinstance(out, Tensor):
            out = output_tensor(out)
        if out.shape != x.shape:
            raise ValueError(f"model: returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
        if self.check_each:
            self._check_finite(out, t)
        if out.dtype != x.dtype:
            if not out.is_floating_point():
                raise TypeError(f"model: returned {out.dtype} values{self._where(t)}; need a floating-point tensor")
            return out.to(x.dtype)
        return out.clone() if out.data_ptr() == x.data_ptr() else out

    def sibling(self, model: Callable[..., Tensor], kwargs: Mapping[str, Any] | None = None) -> Network:
        """Another network of the same run (a perturbed copy, a second model of a composition): counted in the same
        :class:`CallCount`, checked the same way (deferred checks raised with this one's), called with ``kwargs``
        (default: this one's conditioning) in its own parameters' dtype."""
        param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        dtype = param.dtype if param is not None and param.is_floating_point() else None
        check: CheckFinite = "each" if self.check_each else "end"
        other = Network(model, self.kwargs if kwargs is None else kwargs, dtype, self.calls, check, self.label)
        other._pending = self._pending
        return other

    def _where(self, t: float) -> str:
        return f" (t = {t:.6g}{', solver ' + repr(self.label) if self.label else ''})"

    def _check_finite(self, out: Tensor, t: float) -> None:
        if out.is_cpu:  # no device sync to avoid: check at once
            if not all_finite(out):
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


def output_tensor(out: object) -> Tensor:
    """The tensor of a model output that is not one: ``.sample`` (diffusers' output objects), the first element of a
    tuple or list (``return_dict=False``), or a dict's ``"sample"`` entry or only tensor (TypeError otherwise)."""
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, Mapping):
        tensors = [v for v in out.values() if isinstance(v, Tensor)]
        if isinstance(out.get("sample"), Tensor):
            return out["sample"]
        if len(tensors) == 1:
            return tensors[0]
    raise TypeError(
        f"model: returned a {type(out).__name__}; need a tensor, an object with a .sample tensor, a tuple or list "
        "whose first element is the tensor, or a dict holding one tensor"
    )
