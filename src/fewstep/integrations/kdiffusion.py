"""k-diffusion / ComfyUI: fewstep solvers with k-diffusion's sampler signature, and the reverse direction.

k-diffusion samplers are called as ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)``
where ``model(x, sigma, **extra_args)`` returns the denoised ``x0`` for ``x = x0 + sigma eps`` and ``sigmas``
is a decreasing grid, usually ending in 0. That is fewstep's :class:`~fewstep.EDM` schedule (alpha = 1,
sigma = t) with a ``"sample"``-predicting model taking sigma, so every fewstep solver runs on it unchanged::

    from fewstep.integrations import kdiffusion
    samples = kdiffusion.sample_dpmpp_3m(model, x, sigmas)        # any fewstep solver: sample_<name>

:func:`wrap` goes the other way: it turns a fewstep :class:`~fewstep.Denoiser` (any schedule and prediction)
into a k-diffusion denoiser ``D(x_hat, sigma_hat)`` on the scaled state ``x_hat = x / alpha`` with
``sigma_hat = sigma / alpha``, so k-diffusion's own samplers can run on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..adaptive import AdaptiveStats, PIDController, sample_adaptive
from ..model import CallCount, Denoiser
from ..predictions import conversion
from ..sampling import sample
from ..schedules import EDM
from ..solvers import available
from ..spacing import model_times

KSampler = Callable[..., Tensor]


def make_sampler(solver: str, **solver_defaults: Any) -> KSampler:
    """A k-diffusion-signature sampler that runs fewstep's ``solver`` on the given sigmas."""

    def sampler(
        model: Callable[..., Tensor],
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        disable: bool | None = None,
        **options: Any,
    ) -> Tensor:
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
        if s.ndim != 1 or len(s) < 2:
            raise ValueError("sigmas: need a decreasing 1-D grid of at least two noise levels")
        clean_end = bool(s[-1] == 0)
        levels = s[:-1] if clean_end else s
        if torch.any(levels <= 0):
            raise ValueError("sigmas: only the last noise level may be 0")
        lo, hi = float(levels.min()), float(levels.max())
        schedule = EDM(sigma_min=lo, sigma_max=hi if hi > lo else lo * (1 + 1e-12))
        kwargs = dict(extra_args or {})

        def kcallback(info: dict[str, Any]) -> None:
            if callback is not None:
                sig = s[info["i"]].item()
                callback({"x": info["x"], "i": info["i"], "sigma": sig, "sigma_hat": sig, "denoised": info["denoised"]})

        return sample(
            lambda x_, sigma_: model(x_, sigma_, **kwargs),
            x,
            schedule,
            solver,
            spacing=levels,
            prediction="sample",
            time_input="sigma",
            final="zero" if clean_end else "t_min",
            callback=kcallback if callback is not None else None,
            progress=None if disable is None else not disable,
            **{**solver_defaults, **options},
        )

    sampler.__name__ = sampler.__qualname__ = f"sample_{solver}"
    sampler.__doc__ = f"fewstep's {solver!r} solver with k-diffusion's sampler signature."
    return sampler


#: Every fewstep solver as a k-diffusion sampler, by fewstep name. Stochastic ones take ``noise_sampler=``
#: (k-diffusion's convention) or ``generator=``; with neither they draw from torch's global generator.
SAMPLERS: dict[str, KSampler] = {info.name: make_sampler(info.name) for info in available()}


def sample_dpm_adaptive(
    model: Callable[..., Tensor],
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, int]]:
    """k-diffusion's ``sample_dpm_adaptive`` (eta = 0) on fewstep's adaptive DPM-Solver-12/23 (docs/adaptive.md):
    from ``sigma_max`` to ``sigma_min`` (no step to 0), the batch-RMS error norm. The info dict counts fewstep's
    evaluations: a rejected step keeps its first evaluation, one fewer than k-diffusion spends."""
    if order not in (2, 3):
        raise ValueError(f"order: choose 2 or 3, got {order!r}")
    kwargs = dict(extra_args or {})
    stats = AdaptiveStats()
    pid = PIDController(rtol, atol, pcoeff, icoeff, dcoeff, accept_safety, norm="rms", h_init=h_init)

    def kcallback(info: dict[str, Any]) -> None:
        if callback is not None:
            sig = info["t"]  # EDM: the schedule time is sigma
            callback({"x": info["x"], "i": info["i"], "sigma": sig, "sigma_hat": sig, "denoised": info["denoised"]})

    out = sample_adaptive(
        lambda x_, sigma_: model(x_, sigma_, **kwargs),
        x,
        EDM(sigma_min=float(sigma_min), sigma_max=float(sigma_max)),
        f"dpm_solver_{order - 1}{order}",
        prediction="sample",
        controller=pid,
        final="t_min",
        stats=stats,
        callback=kcallback if callback is not None else None,
        time_input="sigma",
    )
    if not return_info:
        return out
    info = {"steps": stats.accepted + stats.rejected, "nfe": stats.nfe, "n_accept": stats.accepted}
    return out, {**info, "n_reject": stats.rejected}


def __getattr__(name: str) -> KSampler:  # sample_<solver>
    if name.startswith("sample_") and name[len("sample_") :] in SAMPLERS:
        return SAMPLERS[name[len("sample_") :]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class KDiffusionDenoiser(torch.nn.Module):
    """A fewstep :class:`Denoiser` seen as a k-diffusion denoiser ``D(x_hat, sigma_hat, **kwargs) -> x0``."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser: must be a fewstep.Denoiser, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        #: the network calls made through this wrapper
        self.calls = CallCount()
        sched = denoiser.schedule
        self.sigma_min = float(sched.sigma(sched.t_min) / sched.alpha(sched.t_min))
        self.sigma_max = float(sched.sigma(sched.t_max) / sched.alpha(sched.t_max))

    def get_sigmas(self, n: int, spacing: str = "karras") -> Tensor:
        """``n`` noise levels sigma/alpha from ``sigma_max`` to ``sigma_min`` by a fewstep spacing, then 0."""
        sched = self.denoiser.schedule
        t = model_times(sched, n, spacing)
        return torch.cat([torch.exp(-sched.lambda_(t)), torch.zeros(1, dtype=torch.float64)])

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        d = self.denoiser
        sched = d.schedule
        sigma = torch.as_tensor(sigma).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for level in torch.unique(sigma):
            rows = sigma == level
            t = sched.t_of_lambda(-torch.log(level.detach().double().cpu()))
            a, s = float(sched.alpha(t)), float(sched.sigma(t))
            aff = conversion(d.prediction, a, s, float(sched.dalpha(t)), float(sched.dsigma(t)))
            x_t = a * x[rows]
            time = torch.as_tensor(d.time_of(t), dtype=x.dtype, device=x.device).expand(x_t.shape[0])
            row_kwargs = {
                k: v[rows] if isinstance(v, Tensor) and v.shape[:1] == x.shape[:1] else v for k, v in kwargs.items()
            }
            raw = d.model(x_t.to(d.model_dtype or x.dtype), time, **{**d.model_kwargs, **row_kwargs}).to(x.dtype)
            self.calls.network += 1
            self.calls.branches += 1
            out[rows] = aff.x0_x * x_t + aff.x0_out * raw
        return out


def wrap(denoiser: Denoiser) -> KDiffusionDenoiser:
    """The k-diffusion view of a fewstep :class:`Denoiser` (see :class:`KDiffusionDenoiser`)."""
    return KDiffusionDenoiser(denoiser)
