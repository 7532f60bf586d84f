"""The other direction: a fewstep :class:`~fewstep.Denoiser` as a k-diffusion denoiser (:func:`wrap`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...model import CallCount, Denoiser
from ...predictions import conversion
from ...spacing import model_times


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
