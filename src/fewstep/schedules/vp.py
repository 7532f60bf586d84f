"""Variance-preserving schedules (alpha^2 + sigma^2 = 1): linear VP, cosine, and discrete DDPM schedules."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import NoiseSchedule, TimeLike, as64, check_range


class _VariancePreserving(NoiseSchedule):
    """Shared algebra of VP schedules: ``sigma = sqrt(1 - alpha^2)`` and ``log alpha = -log(1 + e^{-2 lambda}) / 2``."""

    default_time_input = "t"

    def log_sigma(self, t: TimeLike) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    @staticmethod
    def log_alpha_of_lambda(lam: TimeLike) -> Tensor:
        lam = as64(lam)
        return -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)

    def dsigma(self, t: TimeLike) -> Tensor:
        # sigma' = -alpha alpha' / sigma
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)


class VP(_VariancePreserving):
    """Linear-beta VP SDE (Song et al. 2021): ``log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not (0 <= beta_min < beta_max):
            raise ValueError(f"beta_min, beta_max: need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        check_range("VP", t_min, t_max)
        if t_min <= 0:
            raise ValueError(f"t_min: must be > 0 for VP (sigma(0) = 0), got {t_min}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def dalpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        # Solve the quadratic  (b1 - b0) t^2 / 4 + b0 t / 2 = log(1 + e^{-2 lambda}) / 2  (DPM-Solver, App. C).
        lam = as64(lam)
        b0, db = self.beta_min, self.beta_max - self.beta_min
        tmp = 2.0 * db * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        return tmp / (torch.sqrt(b0**2 + tmp) + b0) / db


class Cosine(_VariancePreserving):
    """Cosine schedule (Nichol & Dhariwal 2021): ``alpha(t) = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)``."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        check_range("Cosine", t_min, t_max)
        if t_min <= 0 or t_max >= 1:
            raise ValueError(f"t_min, t_max: need 0 < t_min < t_max < 1 for Cosine, got {t_min}, {t_max}")
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.log(torch.cos((as64(t) + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0

    def dalpha(self, t: TimeLike) -> Tensor:
        c = math.pi / 2.0 / (1.0 + self.s)
        return -c * torch.sin((as64(t) + self.s) * c) / math.exp(self._log_alpha_0)

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        log_alpha = self.log_alpha_of_lambda(lam)
        return torch.arccos(torch.exp(log_alpha + self._log_alpha_0)) * 2.0 * (1.0 + self.s) / math.pi - self.s


def named_betas(beta_schedule: str, n: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The beta tables known by name in diffusers configs (``beta_schedule``), in float64.

    ``linear`` (DDPM), ``scaled_linear`` (Stable Diffusion: linear in sqrt(beta)) and ``squaredcos_cap_v2``
    (Nichol & Dhariwal's cosine alpha_bar, ``beta_i = min(1 - abar((i+1)/n) / abar(i/n), 0.999)``).
    """
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        abar = np.cos((np.arange(n + 1) / n + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.minimum(1 - abar[1:] / abar[:-1], 0.999)
    raise ValueError(f"beta_schedule: {beta_schedule!r} not supported; use linear, scaled_linear, squaredcos_cap_v2")


def zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alphas_cumprod) so the last step has zero SNR (Lin et al. 2024, Alg. 1)."""
    a = np.sqrt(alphas_cumprod)
    a0, a_last = a[0], a[-1]
    a = (a - a_last) * a0 / (a0 - a_last)
    return a**2


class DiscreteVP(_VariancePreserving):
    """A DDPM-style schedule given by ``betas`` or ``alphas_cumprod`` over N training steps.

    Continuous time follows DPM-Solver: training index n sits at ``t_n = (n + 1) / N`` and ``log alpha`` is
    piecewise linear between those points; the clean point ``(t = 0, log alpha = 0)`` closes the table. A
    model that takes the integer timestep receives the (fractional) index ``n = t N - 1``.

    ``rescale_zero_terminal_snr`` applies Lin et al.'s rescaling; as in diffusers, the terminal
    ``alphas_cumprod`` is then clamped to ``2**-24`` so that lambda stays finite.
    """

    default_time_input = "index"

    def __init__(
        self,
        betas: np.ndarray | Tensor | None = None,
        alphas_cumprod: np.ndarray | Tensor | None = None,
        *,
        rescale_zero_terminal_snr: bool = False,
    ):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("DiscreteVP: give exactly one of betas= or alphas_cumprod=")
        if betas is not None:
            b = np.asarray(torch.as_tensor(betas, dtype=torch.float64).cpu(), dtype=np.float64)
            if b.ndim != 1 or len(b) < 2 or np.any(b <= 0) or np.any(b >= 1):
                raise ValueError("betas: need a 1-D sequence of at least 2 values in (0, 1)")
            ac = np.cumprod(1.0 - b)
        else:
            ac = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu(), dtype=np.float64)
            if ac.ndim != 1 or len(ac) < 2 or np.any(ac <= 0) or np.any(ac > 1) or np.any(np.diff(ac) >= 0):
                raise ValueError("alphas_cumprod: need a 1-D strictly decreasing sequence in (0, 1]")
        if rescale_zero_terminal_snr:
            ac = zero_terminal_snr(ac)
            ac[-1] = 2.0**-24
        self.num_train_timesteps = n = len(ac)
        self.alphas_cumprod = ac
        self._t = np.linspace(0.0, 1.0, n + 1)  # t = 0 is the clean point, t_n = (n + 1) / N
        # the C library's log, element by element: numpy's vectorised float64 log rounds the last bit differently
        # across numpy versions and CPUs, which would make the schedule (and adaptive step sequences) vary with them
        self._log_alpha = np.array([0.0] + [0.5 * math.log(a) for a in ac.tolist()], dtype=np.float64)
        self._slope = np.diff(self._log_alpha) / np.diff(self._t)
        self.t_min, self.t_max = 1.0 / n, 1.0

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """DDPM's linear betas."""
        return cls(betas=named_betas("linear", num_train_timesteps, beta_start, beta_end))

    @classmethod
    def scaled_linear(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        rescale_zero_terminal_snr: bool = False,
    ) -> DiscreteVP:
        """Stable Diffusion's betas (linear in sqrt(beta))."""
        betas = named_betas("scaled_linear", num_train_timesteps, beta_start, beta_end)
        return cls(betas=betas, rescale_zero_terminal_snr=rescale_zero_terminal_snr)

    def __repr__(self) -> str:
        return f"DiscreteVP(num_train_timesteps={self.num_train_timesteps}, alphas_cumprod[-1]={self.alphas_cumprod[-1]:.3g})"

    def log_alpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        if t.requires_grad:  # times being optimised (fewstep.tune's gradients): the same interpolation in torch
            return interpolate(t, self._t, self._log_alpha)
        return torch.from_numpy(np.asarray(np.interp(t.numpy(), self._t, self._log_alpha), dtype=np.float64)).reshape(
            t.shape
        )

    def dalpha(self, t: TimeLike) -> Tensor:
        t = as64(t)
        k = np.clip(np.searchsorted(self._t, t.detach().numpy(), side="right") - 1, 0, len(self._slope) - 1)
        return self.alpha(t) * torch.from_numpy(np.asarray(self._slope[k], dtype=np.float64)).reshape(t.shape)

    def t_of_lambda(self, lam: TimeLike) -> Tensor:
        log_alpha = self.log_alpha_of_lambda(lam)
        # log alpha is decreasing and piecewise linear in t: invert by interpolating the flipped table.
        if log_alpha.requires_grad:
            return interpolate(log_alpha, self._log_alpha[::-1], self._t[::-1])
        out = np.interp(log_alpha.numpy(), self._log_alpha[::-1], self._t[::-1])
        return torch.from_numpy(np.asarray(out, dtype=np.float64)).reshape(log_alpha.shape)

    def index(self, t: TimeLike) -> Tensor:
        """The (fractional) training timestep index ``n = t N - 1`` of a continuous time."""
        return as64(t) * self.num_train_timesteps - 1.0

    def t_of_index(self, n: TimeLike) -> Tensor:
        return (as64(n) + 1.0) / self.num_train_timesteps


def interpolate(x: Tensor, xp: np.ndarray, fp: np.ndarray) -> Tensor:
    """``np.interp(x, xp, fp)`` (``xp`` increasing; constant beyond its ends) as torch operations, differentiable in
    ``x``: on the segment ``[xp_k, xp_{k+1}]`` holding ``x``, ``fp_k + (fp_{k+1} - fp_k) / (xp_{k+1} - xp_k) (x - xp_k)``."""
    xs, fs = torch.from_numpy(np.ascontiguousarray(xp)), torch.from_numpy(np.ascontiguousarray(fp))
    x = x.clamp(float(xp[0]), float(xp[-1]))
    k = (torch.searchsorted(xs, x.detach().contiguous(), right=True) - 1).clamp(0, len(xs) - 2)
    slope = (fs[k + 1] - fs[k]) / (xs[k + 1] - xs[k])
    return fs[k] + slope * (x - xs[k])
