"""Kinetic (underdamped) Langevin samplers: the diffusion in position ``x`` and velocity ``v``

    dx = v dt,      dv = M^{-1} grad log p(x) dt - gamma v dt + sqrt(2 gamma M^{-1}) dW,

whose stationary law is ``p(x) N(v; 0, M^{-1})`` (``M^{-1}`` a diagonal inverse mass, ``gamma`` the friction),
discretised by three integrators (``h`` the step, ``g = grad log p``, ``eta = exp(-gamma h)``):

* ``baoab`` (Leimkuhler & Matthews 2013, "Rational construction of stochastic numerical methods for molecular
  sampling"): ``B(h/2) A(h/2) O(h) A(h/2) B(h/2)`` with ``B(t): v += t M^{-1} g(x)``, ``A(t): x += t v`` and the
  exact Ornstein-Uhlenbeck step ``O(t): v = e^{-gamma t} v + sqrt(M^{-1}) sqrt(2 gamma) int_0^t e^{-gamma (t-s)}
  dW_s``. One gradient per step; weak order 2, strong order 1; for a Gaussian target its ``x``-marginal is exact.
* ``obabo`` (Bussi & Parrinello 2007): ``O(h/2) B(h/2) A(h) B(h/2) O(h/2)``, one gradient per step; weak order 2,
  strong order 1.
* ``randomized_midpoint`` (Shen & Lee 2019, "The randomized midpoint method for log-concave sampling"; analysed in
  Yu, Karagulyan & Dalalyan 2023, "Langevin Monte Carlo for strongly log-concave distributions: randomized
  midpoint revisited"): with ``u ~ U(0, 1)``, ``tau = u h``, ``F(x) = M^{-1} g(x)``,
  ``phi1(t) = (1 - e^{-gamma t}) / gamma``, ``phi2(t) = (t - phi1(t)) / gamma``, ``sigma = sqrt(2 gamma M^{-1})``,

      x_tau   = x + phi1(tau) v + phi2(tau) F(x) + sigma int_0^tau phi1(tau - s) dW_s
      x_{k+1} = x + phi1(h) v + h phi1(h - tau) F(x_tau) + sigma int_0^h phi1(h - s) dW_s
      v_{k+1} = eta v + h e^{-gamma (h - tau)} F(x_tau) + sigma int_0^h e^{-gamma (h - s)} dW_s

  the force integral ``int_0^h K(h - s) F(x(s)) ds`` of the exact solution estimated without bias by one random
  point; two gradients per step; strong order 1.5, better dimension dependence than the splittings.

The Gaussian integrals are drawn jointly and exactly (:func:`fewstep.langevin.noise.ou_integrals`), from a
generator or from a Brownian path (``brownian=``; then step ``k`` is the path's ``[t0 + k h, t0 + (k + 1) h]``).

Warm-up (as NUTS's): every scheme warms up with OBABO steps whose Hamiltonian (BAB) part is Metropolis-adjusted,
with a velocity flip on rejection (generalised HMC, Horowitz 1991), so a step size tried too large is rejected
instead of throwing the chain away; the step size of each chain is adapted by dual averaging to ``target_accept`` of
the acceptance probability ``min(1, exp(-dH))`` (``dH`` the energy error of the BAB part) and a diagonal inverse mass
on Stan's windows, from the draws' variance or (``mass_estimate="fisher"``) from the Fisher divergence
(``sqrt(Var x / Var g)``, nutpie's estimate), which a start transient does not distort. A warm-up iteration costs
one gradient (a NUTS one, a whole trajectory), so where the preconditioned target has slow directions the mass needs
more iterations than NUTS's: on a rotated 100-D Gaussian of condition 1000, 500 leave the whitened frequency ratio
at 50 to 69 (the target's own is 32) and 5,000 bring it to 31 to 33, doubling the randomized midpoint's ESS per
gradient (docs/langevin.md); ``warmup_tolerance`` lets the warm-up run past ``warmup`` until the mass has settled
(:mod:`fewstep.langevin.settle`), so that one setting serves both kinds of target. The kept draws then use the
chosen scheme, unadjusted; for the splittings the same acceptance statistic is reported as ``Chains.acceptance``
(a measure of the discretisation error). A score-only target has no energy: give ``step_size``, and warm-up runs
unadjusted OBABO (adapting the mass only).

Friction: ``friction="auto"`` warms up at ``gamma = 1`` and, at the end of the last mass window, sets
``gamma = 1 / sqrt(lambda_max)`` from the whitened covariance of that window's draws (as MEADS sets its damping,
Hoffman & Sountsov 2022; :mod:`fewstep.langevin.adaptation`): on a Gaussian the autocorrelation time of a direction
of standard deviation ``s`` is ``2 gamma s^2``, so a fixed friction is slow in the directions a diagonal mass leaves
long. Unadjusted steps are screened for an energy blow-up (:mod:`fewstep.langevin.backoff`): rejected, with the
chain's step backed off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from fewstep.noise.brownian import BrownianPath

from .adaptation import Warmup
from .backoff import StepBackoff
from .chains import Chains
from .noise import OUCoefficients, StepNoise
from .registry import check_run, register
from .settle import DEFAULT_MAX_WARMUP_FRACTION, SettlingSchedule
from .target import Target

__all__ = ["SCHEMES", "KineticState", "baoab", "kinetic", "obabo", "randomized_midpoint"]

#: the friction of the warm-up before ``friction="auto"`` has its estimate (whitened units): strong enough that
#: chains started far out shed their energy within a few time units
WARMUP_FRICTION = 1.0


@dataclass(frozen=True)
class KineticState:
    """Position ``x``, velocity ``v``, score ``g`` at ``x`` and log-density ``lp`` at ``x`` (None for a score)."""

    x: Tensor
    v: Tensor
    g: Tensor
    lp: Tensor | None


@dataclass(frozen=True)
class StepParams:
    """The constants of a run of equal steps, computed once (again only when warm-up changes the step or the mass):
    step ``h`` (``[chains, 1]``), friction ``gamma``, inverse mass ``m`` (``[chains, d]``, ``[d]`` or a scalar
    tensor), ``half_hm = h m / 2``, the decays ``e^{-gamma h}`` and ``e^{-gamma h / 2}``, ``sigma =
    sqrt(2 gamma m)`` and the Ornstein-Uhlenbeck integrals' coefficients over a step and a half step."""

    h: Tensor
    gamma: float
    m: Tensor
    half_hm: Tensor
    decay: Tensor
    decay_half: Tensor
    sigma: Tensor
    ou_full: OUCoefficients
    ou_half: OUCoefficients

    @classmethod
    def of(cls, h: Tensor, gamma: float, m: Tensor) -> StepParams:
        return cls(
            h=h,
            gamma=gamma,
            m=m,
            half_hm=0.5 * h * m,
            decay=torch.exp(-gamma * h),
            decay_half=torch.exp(-0.5 * gamma * h),
            sigma=(2.0 * gamma * m).sqrt(),
            ou_full=OUCoefficients.of(h, gamma, h),
            ou_half=OUCoefficients.of(0.5 * h, gamma, h),
        )


def _evaluate(target: Target, x: Tensor) -> tuple[Tensor | None, Tensor]:
    if target.has_log_prob:
        lp, g = target.log_prob_and_score(x)
        return lp, g
    return None, target.score(x)


def _kinetic_energy(v: Tensor, m: Tensor) -> Tensor:
    return 0.5 * (v * v / m).sum(-1)


def _energy_change(old: KineticState, new: KineticState, m: Tensor) -> Tensor | None:
    """``H(new) - H(old)`` with ``H = -log p(x) + v^T M v / 2``; None without a density."""
    if old.lp is None or new.lp is None:
        return None
    return (-new.lp + _kinetic_energy(new.v, m)) - (-old.lp + _kinetic_energy(old.v, m))


def _reject(old: KineticState, new: KineticState, bad: Tensor) -> KineticState:
    """``new`` where ``bad`` is False; else ``old`` with its velocity reversed (a rejected proposal)."""
    col = bad[:, None]
    return KineticState(
        x=torch.where(col, old.x, new.x),
        v=torch.where(col, -old.v, new.v),
        g=torch.where(col, old.g, new.g),
        lp=None if old.lp is None or new.lp is None else torch.where(bad, old.lp, new.lp),
    )


def _o_noise(noise: StepNoise, p: StepParams, k: int, half: int | None) -> Tensor:
    """``sqrt(2 gamma M^{-1}) int e^{-gamma (t - s)} dW_s`` over step ``k`` (``half=None``) or its first (0) or
    second (1) half."""
    if half is None:
        return p.sigma * p.ou_full.integrals(*noise.pair(k)).e
    return p.sigma * p.ou_half.integrals(*noise.pair(k, 0.5 * half, 0.5 * (half + 1))).e


StepFn = Callable[[Target, KineticState, StepParams, StepNoise, int], tuple[KineticState, Tensor | None]]


def baoab_step(
    target: Target, s: KineticState, p: StepParams, noise: StepNoise, k: int
) -> tuple[KineticState, Tensor | None]:
    """One BAOAB step; returns the new state and the energy error of its B and A parts (the total energy change
    less the O part's kinetic-energy change)."""
    half = 0.5 * p.h
    v = s.v + p.half_hm * s.g
    x = s.x + half * v
    v_o = p.decay * v + _o_noise(noise, p, k, None)
    x = x + half * v_o
    lp, g = _evaluate(target, x)
    new = KineticState(x=x, v=v_o + p.half_hm * g, g=g, lp=lp)
    if s.lp is None or lp is None:
        return new, None
    total = (-lp + _kinetic_energy(new.v, p.m)) - (-s.lp + _kinetic_energy(s.v, p.m))
    return new, total - (_kinetic_energy(v_o, p.m) - _kinetic_energy(v, p.m))


def _bab(target: Target, s: KineticState, p: StepParams, v0: Tensor) -> tuple[KineticState, Tensor | None]:
    """Velocity Verlet ``B(h/2) A(h) B(h/2)`` from ``(s.x, v0)``; the state and its energy error."""
    x = s.x + p.h * (v0 + p.half_hm * s.g)
    lp, g = _evaluate(target, x)
    v1 = v0 + p.half_hm * (s.g + g)
    dh = None
    if s.lp is not None and lp is not None:
        dh = (-lp + _kinetic_energy(v1, p.m)) - (-s.lp + _kinetic_energy(v0, p.m))
    return KineticState(x=x, v=v1, g=g, lp=lp), dh


def obabo_step(
    target: Target, s: KineticState, p: StepParams, noise: StepNoise, k: int
) -> tuple[KineticState, Tensor | None]:
    """One OBABO step; returns the new state and the energy error of its velocity-Verlet (BAB) part."""
    v0 = p.decay_half * s.v + _o_noise(noise, p, k, 0)
    new, dh = _bab(target, s, p, v0)
    return replace(new, v=p.decay_half * new.v + _o_noise(noise, p, k, 1)), dh


def adjusted_obabo_step(
    target: Target, s: KineticState, p: StepParams, noise: StepNoise, k: int
) -> tuple[KineticState, Tensor | None]:
    """One OBABO step whose BAB part is a Metropolis proposal (the velocity flipped on rejection): generalised HMC
    with one leapfrog step, exact for the target at any step size. Returns the state and the proposal's energy
    error ``dH``."""
    assert s.lp is not None
    v0 = p.decay_half * s.v + _o_noise(noise, p, k, 0)
    prop, dh = _bab(target, s, p, v0)
    assert dh is not None and prop.lp is not None
    dh = torch.nan_to_num(dh, nan=torch.inf)
    accept = torch.log(noise.uniform(dh.shape)) < -dh
    col = accept[:, None]
    kept = KineticState(
        x=torch.where(col, prop.x, s.x),
        v=torch.where(col, prop.v, -v0),
        g=torch.where(col, prop.g, s.g),
        lp=torch.where(accept, prop.lp, s.lp),
    )
    return replace(kept, v=p.decay_half * kept.v + _o_noise(noise, p, k, 1)), dh


def _phi1(t: Tensor, gamma: float) -> Tensor:
    return -torch.expm1(-gamma * t) / gamma


def randomized_midpoint_step(
    target: Target, s: KineticState, p: StepParams, noise: StepNoise, k: int
) -> tuple[KineticState, Tensor | None]:
    """One randomized-midpoint step (two gradients); no energy statistic."""
    gamma, h = p.gamma, p.h
    if noise.path is None:
        u = noise.uniform((s.x.shape[0], 1))
        first_xi, second_xi = noise.pair(k), noise.pair(k)
    else:  # a path is queried at one time per step: one midpoint for all chains
        frac = min(max(float(noise.uniform((1,)).item()), 1e-6), 1.0 - 1e-6)
        u = torch.full_like(h, frac)
        first_xi, second_xi = noise.pair(k, 0.0, frac), noise.pair(k, frac, 1.0)
    tau = u * h
    first = OUCoefficients.of(tau, gamma, h).integrals(*first_xi)
    second = OUCoefficients.of(h - tau, gamma, h).integrals(*second_xi)
    phi1_tau = _phi1(tau, gamma)
    x_mid = s.x + phi1_tau * s.v + ((tau - phi1_tau) / gamma) * (p.m * s.g) + p.sigma * (first.dw - first.e) / gamma
    f_mid = p.m * target.score(x_mid)
    decay_rest = torch.exp(-gamma * (h - tau))
    e_h = decay_rest * first.e + second.e
    dw_h = first.dw + second.dw
    x = s.x + _phi1(h, gamma) * s.v + h * _phi1(h - tau, gamma) * f_mid + p.sigma * (dw_h - e_h) / gamma
    v = p.decay * s.v + h * decay_rest * f_mid + p.sigma * e_h
    lp, g = _evaluate(target, x)
    return KineticState(x=x, v=v, g=g, lp=lp), None


#: scheme name -> its step function
SCHEMES: dict[str, StepFn] = {
    "baoab": baoab_step,
    "obabo": obabo_step,
    "randomized_midpoint": randomized_midpoint_step,
}


def kinetic(
    target: Target,
    x0: Tensor,
    *,
    draws: int,
    warmup: int = 0,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    scheme: str = "baoab",
    friction: float | str = "auto",
    target_accept: float = 0.9,
    adapt_mass: bool = True,
    pooled_mass: bool = True,
    inverse_mass: Tensor | None = None,
    initial_step_size: float = 0.1,
    velocity: Tensor | None = None,
    brownian: BrownianPath | None = None,
    max_energy_error: float = 1000.0,
    step_backoff: float = 0.5,
    mass_estimate: str = "variance",
    warmup_tolerance: float | None = None,
    max_warmup: int | None = None,
    **options: Any,
) -> Chains:
    """Run kinetic Langevin with ``scheme`` (``"baoab"``, ``"obabo"`` or ``"randomized_midpoint"``).

    Args:
        friction: ``gamma`` (in units of the inverse mass's time scale), or ``"auto"``: adapted in warm-up to one
            over the longest standard deviation of the preconditioned target (1 without a warm-up).
        step_size: the step ``h``; ``None`` adapts it in warm-up (from ``initial_step_size``) to ``target_accept``
            of the Hamiltonian part's acceptance statistic (needs a log-density).
        adapt_mass: adapt a diagonal inverse mass in warm-up (Stan's windows; from ``inverse_mass`` or the
            identity). Without it, ``inverse_mass`` (``[d]`` or ``[chains, d]``) is a fixed preconditioner.
        pooled_mass: estimate the mass from all the chains' warm-up draws together (``[d]``, the default) rather
            than per chain (``[chains, d]``).
        velocity: the initial velocity ``[chains, d]`` (default ``N(0, M^{-1})`` from ``generator``).
        brownian: a :class:`~fewstep.noise.BrownianPath` (``batch_size=chains``, ``shape=(d,)``) driving the noise,
            step ``k`` over ``[t0 + k h, t0 + (k + 1) h]`` (needs a fixed ``step_size`` and no warm-up).
        max_energy_error: an unadjusted step whose energy error exceeds it (or whose state is not finite) is
            rejected, the velocity reversed (:mod:`fewstep.langevin.backoff`); ``math.inf`` rejects only
            non-finite states.
        step_backoff: the factor applied to a chain's step size after a rejected step (1: no back-off).
        mass_estimate: how a slow window estimates the diagonal inverse mass: ``"variance"`` (the default: the
            draws' variance, Stan's) or ``"fisher"`` (``sqrt(Var x / Var g)`` of the draws and their scores,
            nutpie's; :func:`~fewstep.langevin.adaptation.fisher_inverse_mass`), which a start transient does not
            distort: the choice for short warm-ups from a poor start. The friction's estimate takes the same form.
        warmup_tolerance: ``None`` (the default) warms up for exactly ``warmup`` iterations. A positive float makes
            ``warmup`` the minimum of a warm-up that ends when the mass has settled
            (:mod:`fewstep.langevin.settle`): past the minimum's windows, doubling slow windows are appended while
            the RMS over the coordinates of ``log(m_new / m_old)`` between consecutive windows has not stayed within
            ``warmup_tolerance`` twice in a row (0.4 is the benchmark's choice), then the terminal step-size
            buffer. Needs ``adapt_mass`` and ``warmup >= 20``; ``Chains.warmup`` reports the length run (its
            gradients count in ``gradient_evaluations``).
        max_warmup: the settled warm-up's cap in iterations (default ``max(warmup, draws // 4)``, a quarter of the
            kept draws).
    """
    if options:
        raise TypeError(
            f"kinetic got unexpected options {sorted(options)}; it takes scheme, friction, target_accept, "
            "adapt_mass, pooled_mass, inverse_mass, initial_step_size, velocity, brownian, max_energy_error, "
            "step_backoff, mass_estimate, warmup_tolerance and max_warmup"
        )
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    target, x = check_run(target, x0, draws, warmup, step_size, scheme)
    adapt_friction = isinstance(friction, str) and friction == "auto"
    if not adapt_friction and (isinstance(friction, bool) or not isinstance(friction, int | float) or not friction > 0):
        raise ValueError(f"friction must be 'auto' or a positive float (gamma), got {friction!r}")
    if step_size is None and not target.has_log_prob:
        raise ValueError(
            f"{scheme} adapts its step size from the energy error, which needs the log-density; target "
            f"{target.name!r} has only a score: give step_size"
        )
    if brownian is not None and warmup > 0 and adapt_mass:
        raise ValueError("brownian drives fixed-step runs: give step_size, and adapt_mass=False or warmup=0")
    settle = None
    if warmup_tolerance is not None:
        if not adapt_mass:
            raise ValueError("warmup_tolerance stops the warm-up when the adapted mass settles: needs adapt_mass=True")
        cap = max(warmup, int(DEFAULT_MAX_WARMUP_FRACTION * draws)) if max_warmup is None else max_warmup
        settle = SettlingSchedule(minimum=warmup, tolerance=warmup_tolerance, max_warmup=cap)
    elif max_warmup is not None:
        raise ValueError("max_warmup caps a settled warm-up: give warmup_tolerance too (e.g. 0.4), or leave it out")
    warm = Warmup.of_run(
        scheme, x, warmup, step_size=step_size, initial_step_size=initial_step_size, target_accept=target_accept,
        adapt_mass=adapt_mass, pooled_mass=pooled_mass, inverse_mass=inverse_mass,
        friction=WARMUP_FRICTION if adapt_friction else float(friction), adapt_friction=adapt_friction,
        mass_estimate=mass_estimate, settle=settle,
    )  # fmt: skip
    guard = StepBackoff(x, max_energy_error=max_energy_error, step_backoff=step_backoff)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    noise = StepNoise(x, generator=generator, path=brownian, step_size=step_size)
    m = warm.inverse_mass if warm.inverse_mass is not None else one
    if velocity is None:
        v = m.sqrt() * noise.normal()
    else:
        if not isinstance(velocity, Tensor) or velocity.shape != x.shape:
            raise ValueError(f"velocity must be a Tensor of shape [chains, d] = {tuple(x.shape)}")
        v = velocity.to(dtype=x.dtype, device=x.device)
    start = target.gradient_evaluations
    lp, g = _evaluate(target, x)
    state = KineticState(x=x, v=v, g=g, lp=lp)
    chains = x.shape[0]
    out = x.new_empty((chains, draws, x.shape[1]))
    accept_sum = x.new_zeros(chains)
    has_energy = target.has_log_prob and scheme != "randomized_midpoint"
    warm_step = adjusted_obabo_step if target.has_log_prob else obabo_step
    params: StepParams | None = None
    made_for: tuple[Tensor, Tensor, Tensor, float] | None = None  # the step, mass, back-off and friction used
    k = 0
    while k < warm.warmup + draws:  # a settled warm-up grows warm.warmup while it runs
        warming = k < warm.warmup
        m_now = warm.inverse_mass if warm.inverse_mass is not None else one
        now = (warm.step, m_now, guard.scale, warm.friction)
        if (
            made_for is None
            or any(a is not b for a, b in zip(made_for[:3], now[:3], strict=True))
            or made_for[3] != now[3]
        ):
            params = StepParams.of(warm.step_size * guard.scale, warm.friction, m_now)
            made_for = now
        assert params is not None
        adjusted = warming and target.has_log_prob
        step = warm_step if warming else SCHEMES[scheme]
        old = state
        state, dh = step(target, state, params, noise, k)
        if not adjusted:  # an unadjusted step: reject an energy blow-up, back off the step
            error = dh if dh is not None or scheme != "randomized_midpoint" else _energy_change(old, state, m_now)
            state = _reject(old, state, guard.screen(state.x, state.g, error))
            guard.apply(k)
        prob = None if dh is None else torch.nan_to_num(-dh, nan=-torch.inf).clamp(max=0.0).exp()
        if warming:
            warm.observe(k, state.x, prob, state.g)
            m_next = warm.inverse_mass if warm.inverse_mass is not None else one
            if m_next is not m_now:  # keep the velocity in equilibrium with the new mass
                state = replace(state, v=state.v * (m_next / m_now).sqrt())
        else:
            out[:, k - warm.warmup] = state.x
            if prob is not None:
                accept_sum += prob
        k += 1
    backed_off = bool((guard.scale != 1.0).any())
    final_step: Tensor | float = float(step_size) if step_size is not None else warm.step.clone()
    if backed_off:
        final_step = warm.step * guard.scale[:, 0]
    return Chains(
        draws=out,
        acceptance=accept_sum / draws if has_energy else None,
        gradient_evaluations=target.gradient_evaluations - start,
        step_size=final_step,
        inverse_mass=warm.inverse_mass,
        warmup=warm.warmup,
        sampler=scheme,
        divergences=guard.count,
        friction=warm.friction,
    )


def _named(scheme: str) -> Callable[..., Chains]:
    def run(target: Target, x0: Tensor, **kwargs: Any) -> Chains:
        if "scheme" in kwargs:
            raise TypeError(f"{scheme} got a scheme option; use sample(..., 'kinetic', scheme=...) to choose one")
        return kinetic(target, x0, scheme=scheme, **kwargs)

    run.__name__ = scheme
    run.__doc__ = f"Kinetic Langevin with the {scheme} integrator (see :func:`kinetic`)."
    return run


register("kinetic")(kinetic)
baoab = register("baoab")(_named("baoab"))
obabo = register("obabo")(_named("obabo"))
randomized_midpoint = register("randomized_midpoint")(_named("randomized_midpoint"))
