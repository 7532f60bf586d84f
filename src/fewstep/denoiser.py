"""``Denoiser``: the user's network as the solvers see it, a map ``x_t -> (x0_hat, eps_hat)``.

The network is called as it is, ``model(x_t, time, **cond)``. The wrapper knows what it predicts
(:mod:`fewstep.predictions`), which time it takes (``"t"``, ``"sigma"`` = sigma/alpha as k-diffusion
denoisers, ``"index"`` = the fractional DDPM timestep diffusers UNets take, or any callable of t), and
applies classifier-free guidance and dynamic thresholding. Every evaluation is one counted model call.

Per-time work (schedule values, conversion coefficients, the model's time tensor) is done once in
:meth:`Denoiser.point`, before the step loop; :meth:`Denoiser.__call__` does tensor work only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .predictions import Affine, check_prediction, conversion
from .schedules import DiscreteVP, NoiseSchedule

TIME_INPUTS = ("t", "sigma", "index")


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


@dataclass(frozen=True)
class Point:
    """One time at which the model will be evaluated, with everything precomputed for the step loop."""

    t: float
    alpha: float
    sigma: float
    lam: float
    dalpha: float
    dsigma: float
    model_time: Tensor
    affine: Affine


@dataclass
class Threshold:
    """Dynamic thresholding (Saharia et al. 2022, diffusers' convention): per sample
    ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` and ``x0 <- clamp(x0, -s, s) / s``.

    ``ratio=None`` gives static clipping of x0 to ``[-max_value, max_value]``.
    """

    ratio: float | None = 0.995
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.ratio is not None and not (0 < self.ratio <= 1):
            raise ValueError(f"threshold.ratio: must be in (0, 1] or None, got {self.ratio}")
        if not self.max_value > 0:
            raise ValueError(f"threshold.max_value: must be > 0, got {self.max_value}")

    def __call__(self, x0: Tensor) -> Tensor:
        if self.ratio is None:
            return x0.clamp(-self.max_value, self.max_value)
        flat = x0.reshape(x0.shape[0], -1).abs()
        s = torch.quantile(flat.float(), self.ratio, dim=1).to(x0.dtype)
        s = s.clamp(min=1.0, max=self.max_value).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s


@dataclass
class Denoiser:
    """Wraps ``model(x, time, **model_kwargs)`` that predicts ``prediction`` under ``schedule``.

    Classifier-free guidance: with ``guidance_scale != 1`` and ``uncond_kwargs`` given, the conditional and
    unconditional inputs run as one batch of twice the size (one counted evaluation) and
    ``out = out_u + scale (out_c - out_u)``; ``guidance_rescale = phi`` mixes in the std-rescaled output of
    Lin et al. 2024 (eq. 15-16). Guidance acts on the model's own output, which is affine in (x0, eps).
    """

    model: Callable[..., Tensor]
    schedule: NoiseSchedule
    prediction: str = "epsilon"
    time_input: str | Callable[[Tensor], Tensor] = "auto"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    guidance_scale: float = 1.0
    uncond_kwargs: Mapping[str, Any] | None = None
    guidance_rescale: float = 0.0
    threshold: Threshold | None = None
    model_dtype: torch.dtype | None = None
    nfe: int = 0

    def __post_init__(self) -> None:
        if not callable(self.model):
            raise TypeError(f"model: must be callable as model(x, t, **kwargs), got {type(self.model).__name__}")
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule: must be a fewstep NoiseSchedule, got {type(self.schedule).__name__}")
        check_prediction(self.prediction)
        if self.time_input == "auto":
            self.time_input = self.schedule.default_time_input
        if not callable(self.time_input) and self.time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: choose one of 'auto', {', '.join(TIME_INPUTS)} or a callable of t")
        if self.time_input == "index" and not isinstance(self.schedule, DiscreteVP):
            raise ValueError("time_input: 'index' needs a DiscreteVP schedule")
        if not isinstance(self.guidance_scale, int | float):
            raise TypeError(f"guidance_scale: must be a number, got {type(self.guidance_scale).__name__}")
        if self.guidance_scale != 1.0 and self.uncond_kwargs is None:
            raise ValueError(
                "uncond_kwargs: classifier-free guidance (guidance_scale != 1) needs the unconditional inputs"
            )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale: must be in [0, 1], got {self.guidance_rescale}")
        if self.model_dtype is None and isinstance(self.model, torch.nn.Module):
            param = next(iter(self.model.parameters()), None)
            self.model_dtype = param.dtype if param is not None and param.is_floating_point() else None
        self._pending: list[tuple[int, float, Tensor]] = []

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def time_of(self, t: Tensor) -> Tensor:
        """The network's time input for schedule times ``t`` (float64)."""
        if callable(self.time_input):
            return self.time_input(t)
        if self.time_input == "sigma":
            return torch.exp(-self.schedule.lambda_(t))
        if self.time_input == "index":
            assert isinstance(self.schedule, DiscreteVP)
            return self.schedule.index(t)
        return t

    def point(self, t: float, batch: int, device: torch.device, dtype: torch.dtype) -> Point:
        """Precompute everything for an evaluation at schedule time ``t``."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        alpha, sigma = float(self.schedule.alpha(tt)), float(self.schedule.sigma(tt))
        dalpha, dsigma = float(self.schedule.dalpha(tt)), float(self.schedule.dsigma(tt))
        affine = conversion(self.prediction, alpha, sigma, dalpha, dsigma)
        time_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        model_time = torch.as_tensor(self.time_of(tt), dtype=torch.float64).to(device=device, dtype=time_dtype)
        lam = float(self.schedule.lambda_(tt))
        return Point(float(t), alpha, sigma, lam, dalpha, dsigma, model_time.expand(batch), affine)

    def points(self, ts: Sequence[float], batch: int, device: torch.device, dtype: torch.dtype) -> list[Point]:
        """:meth:`point` at each of ``ts``, with the schedule evaluated once for all of them (and the model's
        time moved to ``device`` in one copy). A callable ``time_input`` is still called once per time."""
        if callable(self.time_input) or len(ts) < 2:
            return [self.point(t, batch, device, dtype) for t in ts]
        tt = torch.tensor([float(t) for t in ts], dtype=torch.float64)
        sched = self.schedule
        alpha, sigma = sched.alpha(tt).tolist(), sched.sigma(tt).tolist()
        dalpha, dsigma = sched.dalpha(tt).tolist(), sched.dsigma(tt).tolist()
        lam = sched.lambda_(tt).tolist()
        time_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        model_time = torch.as_tensor(self.time_of(tt), dtype=torch.float64).to(device=device, dtype=time_dtype)
        return [
            Point(
                float(t),
                alpha[j],
                sigma[j],
                lam[j],
                dalpha[j],
                dsigma[j],
                model_time[j].expand(batch),
                conversion(self.prediction, alpha[j], sigma[j], dalpha[j], dsigma[j]),
            )
            for j, t in enumerate(tt.tolist())
        ]

    def _call_model(self, x: Tensor, time: Tensor) -> Tensor:
        dtype = self.model_dtype or x.dtype
        if self.guidance_scale == 1.0:
            out = self.model(x if x.dtype == dtype else x.to(dtype), time, **self.model_kwargs)
            return out if out.dtype == x.dtype else out.to(x.dtype)
        assert self.uncond_kwargs is not None
        kwargs = {k: _cat(self.uncond_kwargs.get(k), v) for k, v in self.model_kwargs.items()}
        out = self.model(torch.cat([x, x]).to(dtype), torch.cat([time, time]), **kwargs).to(x.dtype)
        out_u, out_c = out.chunk(2)
        guided = out_u + self.guidance_scale * (out_c - out_u)
        if self.guidance_rescale > 0:
            dims = tuple(range(1, x.ndim))
            rescaled = guided * (out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
            guided = self.guidance_rescale * rescaled + (1.0 - self.guidance_rescale) * guided
        return guided

    def __call__(self, x: Tensor, p: Point, eps: bool = True) -> tuple[Tensor, Tensor | None]:
        """One model evaluation at point ``p``: ``(x0_hat, eps_hat)`` in ``x``'s dtype (``eps_hat`` None if not
        asked for: data-prediction solvers need the data estimate alone)."""
        return self.convert(x, self._evaluate(x, p), p, eps)

    def convert(self, x: Tensor, out: Tensor, p: Point, eps: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(x0_hat, eps_hat)`` from a model output ``out`` at ``x`` (thresholding applied to x0_hat)."""
        a = p.affine
        x0 = _affine(x, a.x0_x, out, a.x0_out)
        if self.threshold is not None:
            x0 = self.threshold(x0)
            return x0, ((x - p.alpha * x0) / p.sigma if eps else None)
        return x0, (_affine(x, a.eps_x, out, a.eps_out) if eps else None)

    def shifted(
        self, x: Tensor, p: Point, time: Tensor, eps_x: Tensor, eps_out: Tensor, eps: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """One evaluation for point ``p`` with the network called at per-sample model times ``time`` (the
        Time-Shift Sampler, :mod:`fewstep.time_shift`): ``eps_hat = eps_x x + eps_out out`` (the conversion at the
        shifted times) and ``x0_hat = (x - sigma_p eps_hat) / alpha_p`` at ``p`` (thresholding applied to x0_hat)."""
        e = torch.addcmul(x * eps_x, self._evaluate(x, p, time), eps_out)
        x0 = (x - p.sigma * e) / p.alpha
        if self.threshold is not None:
            x0 = self.threshold(x0)
            return x0, ((x - p.alpha * x0) / p.sigma if eps else None)
        return x0, (e if eps else None)

    def _evaluate(self, x: Tensor, p: Point, time: Tensor | None = None) -> Tensor:
        """The model's raw output at point ``p`` (counted, shape- and finiteness-checked), called at ``p``'s model
        time or at ``time``."""
        out = self._call_model(x, p.model_time if time is None else time)
        self.nfe += 1
        if out.shape != x.shape:
            raise ValueError(f"model: returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}")
        self._check_finite(out, p.t)
        return out

    def _check_finite(self, out: Tensor, t: float) -> None:
        if out.is_cpu:  # no device sync to avoid: check at once
            # The sum is non-finite whenever an element is, and costs a fraction of isfinite().all() on the CPU;
            # a huge finite output can overflow it, so the elementwise check confirms before raising.
            if not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
                raise NonFiniteModelOutput(f"model: returned NaN/inf at evaluation {self.nfe} (t = {t:.6g})")
        else:  # accelerators: record without a host-device sync, checked once after the loop
            self._pending.append((self.nfe, t, torch.isfinite(out).all()))

    def raise_if_nonfinite(self) -> None:
        """Raise for the first deferred non-finite evaluation (accelerator devices)."""
        if self._pending:
            flags = torch.stack([ok for _, _, ok in self._pending]).cpu()
            bad = (~flags).nonzero()
            pending, self._pending = self._pending, []
            if len(bad):
                n, t, _ = pending[int(bad[0])]
                raise NonFiniteModelOutput(f"model: returned NaN/inf at evaluation {n} (t = {t:.6g})")


def _affine(x: Tensor, cx: float, out: Tensor, co: float) -> Tensor:
    """``cx x + co out`` as a new tensor (never ``out`` itself, which the model may reuse), in two operations."""
    if cx == 0.0:
        return out * co
    return (x * cx).add_(out, alpha=co)


def _cat(uncond: Any, cond: Any) -> Any:
    """Batch unconditional and conditional model kwargs (tensors concatenated, other values must agree)."""
    if isinstance(cond, Tensor):
        if not isinstance(uncond, Tensor) or uncond.shape != cond.shape:
            raise ValueError("uncond_kwargs: each tensor must match the shape of its model_kwargs counterpart")
        return torch.cat([uncond, cond])
    if uncond is not None and uncond != cond:
        raise ValueError("uncond_kwargs: non-tensor arguments must equal their model_kwargs counterpart")
    return cond
