"""Warm-up adaptation shared by the samplers: the step size by dual averaging to a target acceptance, and a
diagonal inverse mass matrix from windowed variance estimates, on Stan's schedule (as NUTS has).

* Dual averaging (Nesterov 2009; Hoffman & Gelman 2014, "The No-U-Turn Sampler", Algorithm 5): after iteration
  ``t`` with acceptance statistic ``alpha_t``,

      Hbar_t = (1 - 1/(t + t0)) Hbar_{t-1} + (delta - alpha_t) / (t + t0)
      log eps_t = mu - sqrt(t) / gamma * Hbar_t
      log epsbar_t = t^{-kappa} log eps_t + (1 - t^{-kappa}) log epsbar_{t-1}

  with ``mu = log(10 eps_0)``, ``gamma = 0.05``, ``t0 = 10``, ``kappa = 0.75``; after warm-up ``epsbar`` is used.
  Each chain adapts its own step size (vectorised over chains, no host synchronisation).
* Windowed variance (Stan's warm-up): an initial fast buffer (75 iterations), slow windows of 25, 50, 100, ...
  iterations in which the draws' variance is accumulated (Welford), and a terminal fast buffer (50). At the end of
  each slow window the inverse mass becomes the regularised variance ``n/(n+5) var + 1e-3 * 5/(n+5)`` and the
  step-size adaptation restarts. Short warm-ups scale the buffers to 15% / 75% / 10% as Stan does.
* Fisher-divergence mass (``mass_estimate="fisher"``; Seyboldt, Carlson & Carpenter 2026): the same windows, with
  the inverse mass ``sqrt(Var x / Var g)`` of the draws and their scores (:func:`fisher_inverse_mass`), which a
  start transient does not distort.
* Friction of kinetic Langevin (as MEADS sets its damping: Hoffman & Sountsov 2022, "Tuning-free generalized
  Hamiltonian Monte Carlo"): at the end of the last slow window, ``gamma = 1 / sqrt(lambda_max)`` with
  ``lambda_max`` the largest eigenvalue of the covariance of that window's draws (all chains) whitened by the new
  inverse mass, i.e. one over the longest standard deviation of the preconditioned target (with the Fisher mass,
  its Fisher form along the top direction, :func:`largest_whitened_variance`). On a Gaussian the
  integrated autocorrelation time of a coordinate of standard deviation ``s`` is ``2 gamma s^2`` and that of its
  energy about ``1 / gamma``: the slowest direction's worse of the two is smallest near ``gamma = 1 / s_max``
  (a fixed ``gamma = 1`` costs a factor ``s_max`` when the diagonal mass leaves correlations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "FRICTION_SCALE",
    "MASS_ESTIMATES",
    "DualAveraging",
    "WelfordVariance",
    "Warmup",
    "WindowSchedule",
    "largest_whitened_variance",
    "mass_windows",
    "fisher_inverse_mass",
]


#: the estimators of the diagonal inverse mass: the draws' variance (Stan's) or ``sqrt(Var x / Var g)`` (nutpie's)
MASS_ESTIMATES = ("variance", "fisher")

#: the adapted friction is ``FRICTION_SCALE / sqrt(lambda_max)`` (MEADS's choice, 1)
FRICTION_SCALE = 1.0


class WindowSchedule(Protocol):
    """Slow windows that may grow during the warm-up (:class:`fewstep.langevin.settle.SettlingSchedule`):
    ``windows`` (appended to by :meth:`end_window`), the ``minimum`` warm-up and its current ``length``."""

    minimum: int
    windows: list[range]
    length: int

    def end_window(self, window: range, estimate: Tensor) -> bool:
        """Record the mass estimate of the ended ``window``; whether a new window was appended."""
        ...


class DualAveraging:
    """Per-chain dual-averaging step-size adaptation to the target acceptance ``delta`` (see the module)."""

    def __init__(
        self,
        step_size: Tensor,
        target: float,
        *,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target!r}; 0.574 (MALA) or 0.8 are usual")
        self.target = target
        self.gamma = gamma
        self.t0 = t0
        self.kappa = kappa
        self.restart(step_size)

    def restart(self, step_size: Tensor) -> None:
        """Start again from ``step_size`` (``[chains]``), centred on ``log(10 step_size)``."""
        self.mu = torch.log(10.0 * step_size)
        self.h_bar = torch.zeros_like(step_size)
        self.log_eps_bar = torch.zeros_like(step_size)
        self.log_eps = torch.log(step_size)
        self.t = 0

    def update(self, accept: Tensor) -> Tensor:
        """Record the acceptance statistic of one iteration (``[chains]``, in [0, 1]); return the next step size."""
        self.t += 1
        t = self.t
        eta = 1.0 / (t + self.t0)
        alpha = torch.nan_to_num(accept, nan=0.0).clamp(0.0, 1.0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - alpha)
        self.log_eps = self.mu - (math.sqrt(t) / self.gamma) * self.h_bar
        w = t ** (-self.kappa)
        self.log_eps_bar = w * self.log_eps + (1.0 - w) * self.log_eps_bar
        return self.log_eps.exp()

    def final(self) -> Tensor:
        """The averaged step size ``epsbar`` (``[chains]``), used after warm-up."""
        return self.log_eps_bar.exp() if self.t > 0 else self.log_eps.exp()


@dataclass
class WelfordVariance:
    """Running per-chain, per-dimension variance of draws ``[chains, d]`` (Welford's algorithm)."""

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def like(cls, x: Tensor) -> WelfordVariance:
        return cls(count=0, mean=torch.zeros_like(x), m2=torch.zeros_like(x))

    def add(self, x: Tensor) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.count
        self.m2 = self.m2 + delta * (x - self.mean)

    def variance(self, pooled: bool = False) -> tuple[Tensor, int]:
        """The sample variance and the number of draws behind it: per chain (``[chains, d]``), or with ``pooled``
        of all the chains' draws together (``[d]``; the spread between the chains' means included)."""
        n = self.count
        if pooled:
            chains = self.mean.shape[0]
            grand = self.mean.mean(0)
            spread = self.m2.sum(0) + n * ((self.mean - grand) ** 2).sum(0)
            n = n * chains
            return spread / max(n - 1, 1), n
        return self.m2 / max(n - 1, 1), n

    def regularised(self, pooled: bool = False) -> Tensor:
        """Stan's shrunk estimate ``n/(n+5) var + 1e-3 * 5/(n+5)`` of :meth:`variance`."""
        var, n = self.variance(pooled)
        return shrink(var, n)


def shrink(estimate: Tensor, n: int) -> Tensor:
    """Stan's regularisation of a diagonal inverse mass estimated from ``n`` draws: ``n/(n+5) m + 1e-3 * 5/(n+5)``."""
    return (n / (n + 5.0)) * estimate + 1e-3 * (5.0 / (n + 5.0))


def fisher_inverse_mass(draws: WelfordVariance, scores: WelfordVariance, pooled: bool = False) -> Tensor:
    """The diagonal inverse mass ``sqrt(Var x_i / Var g_i)`` (``g`` the score), shrunk as Stan's (:func:`shrink`).

    It minimises the Fisher divergence between the target whitened by the diagonal mass and a standard normal
    (Seyboldt, Carlson & Carpenter 2026, "Preconditioning Hamiltonian Monte Carlo by minimizing Fisher divergence";
    the default of nutpie): for a Gaussian with diagonal covariance it is the
    variance itself, from any spread of draws, because the score ``g_i = -(x_i - mu_i) / sigma_i^2`` scales with
    the draws. So, unlike the draws' variance, it does not keep a transient (chains still shedding the energy of
    their start) in the mass. For correlated targets it lies between the marginal variance and the inverse of the
    precision's diagonal."""
    var_x, n = draws.variance(pooled)
    var_g, _ = scores.variance(pooled)
    ratio = (var_x / var_g.clamp_min(torch.finfo(var_g.dtype).tiny)).sqrt()
    return shrink(ratio.clamp(1e-10, 1e10), n)


def mass_windows(warmup: int, *, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25) -> list[range]:
    """Stan's slow adaptation windows of a warm-up of ``warmup`` iterations (0-based iteration ranges).

    ``warmup < 20`` has no window (no mass adaptation); a warm-up shorter than the three default buffers is split
    15% / 75% / 10%. A window that would leave less than twice its size before the terminal buffer absorbs the rest.
    """
    if warmup < 20:
        return []
    if init_buffer + term_buffer + base_window > warmup:
        init_buffer = int(0.15 * warmup)
        term_buffer = int(0.1 * warmup)
        base_window = warmup - init_buffer - term_buffer
    windows: list[range] = []
    start, size, last = init_buffer, base_window, warmup - term_buffer
    while start < last:
        end = start + size
        if end + 2 * size > last:
            end = last
        windows.append(range(start, end))
        start, size = end, 2 * size
    return windows


def largest_whitened_variance(
    draws: Tensor, inverse_mass: Tensor, *, scores: Tensor | None = None, iterations: int = 50
) -> Tensor:
    """The largest eigenvalue of the covariance of ``draws`` ``[n, chains, d]`` (all chains' draws together,
    about their grand mean) whitened by the diagonal ``inverse_mass`` (``[d]`` or ``[chains, d]``): power
    iteration on ``X^T X / (N - 1)`` through ``X`` (``O(N d)`` memory, no ``d x d`` matrix). A 0-d tensor.

    With the draws' ``scores`` (same shape), the Fisher form of that variance along the top direction ``u``:
    ``sqrt(u^T C_x u / u^T C_g u)``, ``C_g`` the covariance of the whitened scores ``g sqrt(M^{-1})``. At
    stationarity on a Gaussian ``C_g`` is the whitened precision, so for an eigenvector this is the same eigenvalue;
    but, as :func:`fisher_inverse_mass`, it does not grow with a transient spread of the draws (a Gaussian's score
    spreads with them)."""
    white = (draws - draws.mean(dim=(0, 1))) / inverse_mass.sqrt()
    flat = white.reshape(-1, white.shape[-1])
    scale = 1.0 / max(flat.shape[0] - 1, 1)
    vec = flat.abs().mean(0) + 1e-12  # a start with weight on every direction the draws explore
    for _ in range(iterations):
        vec = flat.T @ (flat @ vec)
        vec = vec / vec.norm()
    top = (flat @ vec).square().sum() * scale
    if scores is None:
        return top
    white_g = ((scores - scores.mean(dim=(0, 1))) * inverse_mass.sqrt()).reshape(-1, white.shape[-1])
    along = (white_g @ vec).square().sum() * scale
    return (top / along.clamp_min(torch.finfo(along.dtype).tiny)).sqrt()


def check_inverse_mass(inverse_mass: object, x0: Tensor) -> Tensor | None:
    """``inverse_mass`` (a diagonal preconditioner ``[d]`` or ``[chains, d]``, positive) on ``x0``'s device."""
    if inverse_mass is None:
        return None
    if not isinstance(inverse_mass, Tensor):
        raise TypeError(f"inverse_mass must be a Tensor of shape [d] or [chains, d], got {type(inverse_mass).__name__}")
    if inverse_mass.shape not in (x0.shape[1:], x0.shape):
        raise ValueError(
            f"inverse_mass must have shape [d] = {tuple(x0.shape[1:])} or [chains, d] = {tuple(x0.shape)}, "
            f"got {tuple(inverse_mass.shape)}"
        )
    if not bool((inverse_mass > 0).all()):
        raise ValueError("inverse_mass must be positive (a diagonal inverse mass matrix)")
    return inverse_mass.to(dtype=x0.dtype, device=x0.device)


class Warmup:
    """The warm-up of one run: per-chain step sizes by :class:`DualAveraging` and, when ``adapt_mass``, a diagonal
    inverse mass ``[chains, d]`` from :class:`WelfordVariance` over :func:`mass_windows`; with ``adapt_friction``
    (kinetic Langevin) the friction :attr:`friction` from the last window's draws (module docstring), else the
    given ``friction``.

    With ``pooled_mass`` the variance is that of all the chains' draws together (``[d]``, one mass for every
    chain: a far better estimate for slowly mixing directions than one chain's window, as in cross-chain
    adaptation, e.g. Hoffman & Sountsov 2022); the chains interact only during warm-up, after which each is an
    ordinary Markov chain with a fixed kernel.

    With ``settle`` (a :class:`WindowSchedule`, e.g. :class:`~fewstep.langevin.settle.SettlingSchedule`) the
    windows are the schedule's, which grow while the mass has not settled: :attr:`warmup` is then the warm-up's
    current length (it only grows, at the end of a slow window), and the friction is tuned on the window that turns
    out to be the last.

    Call :meth:`observe` after every warm-up iteration with its draw and acceptance statistic; read
    :attr:`step_size` (``[chains, 1]``, for broadcasting) and :attr:`inverse_mass` for the next iteration.
    """

    def __init__(
        self,
        x0: Tensor,
        warmup: int,
        *,
        step_size: float,
        target_accept: float,
        adapt_step: bool,
        adapt_mass: bool,
        pooled_mass: bool = True,
        inverse_mass: Tensor | None = None,
        friction: float = 1.0,
        adapt_friction: bool = False,
        mass_estimate: str = "variance",
        settle: WindowSchedule | None = None,
    ) -> None:
        if mass_estimate not in MASS_ESTIMATES:
            raise ValueError(
                f"mass_estimate must be one of {', '.join(map(repr, MASS_ESTIMATES))}, got {mass_estimate!r}; "
                "'variance' is Stan's, 'fisher' nutpie's"
            )
        self.mass_estimate = mass_estimate
        chains = x0.shape[0]
        self.friction = float(friction)
        self.adapt_friction = adapt_friction and warmup > 0
        self.pooled_mass = pooled_mass
        self.warmup = warmup
        self.adapt_step = adapt_step and warmup > 0
        self.step = torch.full((chains,), float(step_size), dtype=x0.dtype, device=x0.device)
        self.dual = DualAveraging(self.step, target_accept) if self.adapt_step else None
        self.adapt_mass = adapt_mass
        if settle is not None and (not adapt_mass or settle.minimum != warmup):
            raise ValueError("a settled warm-up adapts the mass from its minimum: adapt_mass=True, warmup=minimum")
        self.settle = settle
        if settle is not None:
            self.windows = settle.windows
        else:
            self.windows = mass_windows(warmup) if adapt_mass or self.adapt_friction else []
        self._last_window = self.windows[-1] if self.windows else range(0)
        self._window_draws: list[Tensor] = []  # the last window's draws, kept only to tune the friction
        self._window_scores: list[Tensor] = []  # and their scores (with mass_estimate="fisher")
        self._ends = {w[-1]: w for w in self.windows if len(w)}
        self._starts = {w[0] for w in self.windows if len(w)}
        self._in_window = False
        self.welford = WelfordVariance.like(x0)
        self.score_welford = WelfordVariance.like(x0)
        self.inverse_mass: Tensor | None = None
        if adapt_mass:
            self.inverse_mass = torch.ones_like(x0[0]) if pooled_mass else torch.ones_like(x0)
        if inverse_mass is not None:  # the start of the adaptation, or (without it) a fixed preconditioner
            self.inverse_mass = inverse_mass.clone()

    @classmethod
    def of_run(
        cls,
        sampler: str,
        x0: Tensor,
        warmup: int,
        *,
        step_size: float | None,
        initial_step_size: float,
        target_accept: float,
        adapt_mass: bool,
        pooled_mass: bool,
        inverse_mass: object,
        friction: float = 1.0,
        adapt_friction: bool = False,
        mass_estimate: str = "variance",
        settle: WindowSchedule | None = None,
    ) -> Warmup:
        """The warm-up of a ``sampler`` run with the user's options, checked: ``step_size=None`` adapts the step
        from ``initial_step_size`` (which needs ``warmup > 0``), ``inverse_mass`` (:func:`check_inverse_mass`)
        starts the mass adaptation or is a fixed preconditioner."""
        if not (isinstance(initial_step_size, int | float) and initial_step_size > 0):
            raise ValueError(f"initial_step_size must be a positive float, got {initial_step_size!r}")
        m0 = check_inverse_mass(inverse_mass, x0)
        if step_size is None and warmup == 0:
            raise ValueError(
                f"{sampler} with step_size=None adapts the step in warm-up: give warmup > 0 or a step_size"
            )
        return cls(
            x0,
            warmup,
            step_size=float(step_size if step_size is not None else initial_step_size),
            target_accept=target_accept,
            adapt_step=step_size is None,
            adapt_mass=adapt_mass,
            pooled_mass=pooled_mass,
            inverse_mass=m0,
            friction=friction,
            adapt_friction=adapt_friction,
            mass_estimate=mass_estimate,
            settle=settle,
        )

    @property
    def step_size(self) -> Tensor:
        """The current step size per chain, ``[chains, 1]``."""
        return self.step[:, None]

    def observe(self, i: int, x: Tensor, accept: Tensor | None, score: Tensor | None = None) -> None:
        """Record warm-up iteration ``i`` (0-based): its draw ``[chains, d]``, acceptance statistic ``[chains]``
        and (needed by ``mass_estimate="fisher"``) the target's score at the draw ``[chains, d]``."""
        fisher = self.adapt_mass and self.mass_estimate == "fisher"
        if fisher and score is None:
            raise ValueError("mass_estimate='fisher' needs the score of every warm-up draw: pass score=")
        if self.dual is not None and accept is not None:
            self.step = self.dual.update(accept)
        if i in self._starts:
            self._in_window = True
            self.welford = WelfordVariance.like(x)
            self.score_welford = WelfordVariance.like(x)
        if self._in_window:
            self.welford.add(x)
            if fisher:
                assert score is not None
                self.score_welford.add(score)
            if self.adapt_friction and i in self._last_window:
                self._window_draws.append(x.detach().clone())
                if fisher:
                    assert score is not None
                    self._window_scores.append(score.detach().clone())
        if i in self._ends:
            self._in_window = False
            if fisher:
                self.inverse_mass = fisher_inverse_mass(self.welford, self.score_welford, self.pooled_mass)
            elif self.adapt_mass:
                self.inverse_mass = self.welford.regularised(self.pooled_mass)
            if self.settle is not None and self.inverse_mass is not None:
                self._extend(self._ends[i], self.inverse_mass)
            if self.adapt_friction and i == self._last_window[-1]:
                m = self.inverse_mass if self.inverse_mass is not None else torch.ones_like(x[0])
                scores = torch.stack(self._window_scores) if self._window_scores else None
                spread = largest_whitened_variance(torch.stack(self._window_draws), m, scores=scores)
                self.friction = FRICTION_SCALE * float(spread.clamp_min(1e-12).rsqrt())  # once per warm-up
                self._window_draws, self._window_scores = [], []
            if self.dual is not None:
                self.dual.restart(self.step)
        if i == self.warmup - 1 and self.dual is not None:
            self.step = self.dual.final()

    def _extend(self, window: range, estimate: Tensor) -> None:
        """At the end of slow ``window``: let the settling schedule append a window (if the mass still moves)."""
        assert self.settle is not None
        if self.settle.end_window(window, estimate):
            new = self.windows[-1]
            self._ends[new[-1]] = new
            self._starts.add(new[0])
            self._last_window = new
            self._window_draws, self._window_scores = [], []  # the ended window was not the last
            self.warmup = self.settle.length
