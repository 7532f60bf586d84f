"""Differentiable models for the adjoint tests and benchmark: the exact mixture denoiser with its means learnable and
shiftable by a conditioning tensor, and a small MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fewstep.bench.targets.mixture import GaussianMixture
from fewstep.schedules import NoiseSchedule


class MixtureEps(nn.Module):
    """``eps_hat(x, t)`` of ``sum_k w_k N(mu_k + offset + shift, s_k^2 I)`` under ``x_t = alpha x0 + sigma eps``,
    in autograd-differentiable torch operations: ``offset`` is a parameter, ``shift`` a conditioning input."""

    def __init__(self, target: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("mu", target.means.clone())
        self.register_buffer("std", target.stds.clone())
        self.register_buffer("log_w", torch.log(target.weights))
        self.offset = nn.Parameter(torch.zeros(target.dim, dtype=torch.float64))

    def forward(self, x: Tensor, time: Tensor, shift: Tensor | None = None) -> Tensor:
        t = time.to(torch.float64).reshape(-1)
        a, s = self.schedule.alpha(t).reshape(-1, 1), self.schedule.sigma(t).reshape(-1, 1)
        mu = self.mu + self.offset if shift is None else self.mu + self.offset + shift
        v = a**2 * self.std**2 + s**2  # (B, K)
        diff = x[:, None, :] - a[:, :, None] * mu[None]  # (B, K, D)
        logits = self.log_w - 0.5 * x.shape[1] * torch.log(v) - diff.square().sum(-1) / (2.0 * v)
        r = torch.softmax(logits, dim=1)
        return s * torch.einsum("bk,bkd->bd", r / v, diff)


class MLP(nn.Module):
    """``eps_hat(x, t) = W2 tanh(W1 [x, t] + b1) + b2`` (with an optional conditioning vector added to the hidden
    layer)."""

    def __init__(self, dim: int, width: int, dtype: torch.dtype = torch.float64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(dim + 1, width, generator=g, dtype=dtype) / (dim + 1) ** 0.5)
        self.b1 = nn.Parameter(torch.randn(width, generator=g, dtype=dtype) * 0.1)
        self.w2 = nn.Parameter(torch.randn(width, dim, generator=g, dtype=dtype) / width**0.5)
        self.b2 = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x: Tensor, time: Tensor, cond: Tensor | None = None) -> Tensor:
        t = time.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        h = torch.cat([x, t], dim=1) @ self.w1 + self.b1
        if cond is not None:
            h = h + cond
        return torch.tanh(h) @ self.w2 + self.b2
