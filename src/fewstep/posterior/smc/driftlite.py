"""DriftLite: particles steered by a controlled drift chosen to keep their weights even, for a reward tilt.

Ren, Gao, Ying, Rotskoff & Han 2025, "DriftLite: Lightweight Drift Control for Inference-Time Scaling of Diffusion
Models". The target is the tilt ``p(x) exp(lam r(x))`` of the prior by a differentiable reward ``r`` (a noisy
measurement's log-likelihood gives the posterior). The particles follow the annealed path

    q_i(x) ∝ p_i(x) exp(h_i(x)),   h_i = lam kappa_i r,   kappa_i = alpha_i^2 / (alpha_i^2 + sigma_i^2)

(``p_i`` the prior's marginal at node ``i``; ``kappa`` rises from about 0 at pure noise to 1 at the clean end, for
any schedule), moving by the prior's stochastic transition ``N(m_i, c_i^2 I)`` (:mod:`fewstep.posterior.smc.chain`)
plus a drift ``c_i^2 u_i(x_i)``, and are weighted (below).

**The degree of freedom** (the paper's §3). For a reverse SDE ``dx = (b + u) ds + sigma dW`` whose particles carry
log-weights ``d log w = g_u ds``, the weighted density follows ``q_s`` when

    g_u = g_0 + div u + u . grad log q_s,   grad log q_s = s + grad h,   s = grad log p_s (the score),

so the drift and the potential trade off: ``u = 0`` is pure reweighting (FK steering along the path), ``u = sigma^2
grad h`` is guidance plus its weights, and a drift that makes ``g_u`` the same for every particle needs no weights at
all. In the discrete chain (``b ds = m_i - x``, ``sigma^2 ds = c_i^2``):

    g_guidance = (h_{i+1} - h_i)(x) + (m_i - x) . grad h + (c_i^2 / 2) (lap h + |grad h|^2),
    u = grad h + theta_1 grad h + theta_2 s,
    g_u = g_guidance + c_i^2 sum_k theta_k L_k,   L_k = div phi_k + phi_k . (s + grad h),

with ``h = h_{i+1}``, the score ``s = -eps_hat / sigma_i`` and ``phi = (grad h, s)``. **Variance-controlling guidance
(VCG)** picks ``theta`` per prompt and step as the weighted least-squares fit that minimises the particles' variance
of ``g_u`` (a 2 x 2 linear system from the current particles, with a small ridge); the divergences come from one
Rademacher probe ``z`` (Hutchinson: ``div phi ~ z . (d phi / dx) z``), the score's through the network (one
backward pass per stochastic step) and the reward's by double backward (or a given ``laplacian``).
``basis=("reward",)`` drops the score (no backward pass through the network). The paper's Energy-Controlling
Guidance (ECG) is not implemented.

**Weights.** With VCG the log-weight grows by the paper's ``g_u`` of the step (the continuous-time weight, first
order in the step: the weighted particles reach the tilt as the steps grow; at few steps they carry the chain's
first-order bias, measured in docs/posterior.md). That weight is what lets the control pay off: in continuous time the exact
path (Girsanov) weight of a drift ``c^2 (grad h + v)`` is the guidance's minus ``|c v|^2 / 2`` plus a martingale
``-c v . dW``, so any control ``v`` only adds variance to it. ``"guidance"`` and
``"none"`` carry that exact discrete ratio,

    log w += h_{i+1}(x_{i+1}) - h_i(x_i) + log N(x_{i+1}; m_i, c_i^2) - log N(x_{i+1}; m_i + c_i^2 u_i, c_i^2),

so they target the chain's own law tilted by ``exp(lam r(x_N))`` exactly as K grows. All start weighted by
``exp(h_0)``; the step to the clean end is deterministic (no drift, weight ``exp(h_N - h_{N-1})``). Resampling by
ESS as :func:`~fewstep.posterior.smc.smc`.

``drift``: ``"vcg"`` (default), ``"guidance"`` (``theta = 0``) or ``"none"`` (``u = 0``: reweighting only).
Cost: ``calls.network`` = the steps; ``calls.backward`` = steps - 1 with ``"vcg"`` and the score in the basis, else
0 (the reward's gradients are not network calls).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...model import CallCount, Denoiser
from ...options import real_option, suggestion
from ...schedules import NoiseSchedule
from ...spacing import SpacingLike
from ...trajectory import gaussian_log_prob
from .chain import Chain
from .engine import SMCResult, _Particles, _resample, check_threshold
from .resampling import check_resampler, effective_sample_size, normalise

__all__ = ["BASES", "DRIFTS", "driftlite", "vcg_coefficients"]

#: the drift choices (module docstring)
DRIFTS = ("vcg", "guidance", "none")
#: the control's basis fields
BASES = ("reward", "score")


def vcg_coefficients(g0: Tensor, basis: Tensor, log_w: Tensor, ridge: float = 1e-8) -> Tensor:
    """VCG's ``theta`` per prompt: the minimiser of the weighted variance of ``g0 + sum_k theta_k basis_k``.

    ``g0``: ``(B, K)``; ``basis``: ``(B, K, P)``; ``log_w``: the particles' log-weights ``(B, K)``. With the
    normalised weights ``w`` and centred values ``G = g0 - sum w g0``, ``L = basis - sum w basis``, the normal
    equations ``(sum_j w_j L_j L_j^T + eps I) theta = -sum_j w_j L_j G_j``, ``eps = ridge * trace / P`` (plus a
    tiny absolute floor, so that K = 1, where everything is 0, gives ``theta = 0``). Returns ``(B, P)``.
    """
    w = torch.exp(normalise(log_w.to(g0.dtype)))
    gc = g0 - (w * g0).sum(1, keepdim=True)
    lc = basis - (w[..., None] * basis).sum(1, keepdim=True)
    gram = torch.einsum("bk,bkp,bkq->bpq", w, lc, lc)
    rhs = -torch.einsum("bk,bkp,bk->bp", w, lc, gc)
    p = basis.shape[-1]
    trace = gram.diagonal(dim1=1, dim2=2).sum(1)
    eps = ridge * trace / p + torch.finfo(g0.dtype).tiny ** 0.5
    eye = torch.eye(p, dtype=g0.dtype, device=g0.device)
    return torch.linalg.solve(gram + eps[:, None, None] * eye, rhs)


def _check(
    reward: object, lam: object, drift: object, basis: object, laplacian: object
) -> tuple[float, tuple[str, ...]]:
    if not callable(reward):
        raise TypeError(f"reward: must be a differentiable callable reward(x) -> (rows,), got {type(reward).__name__}")
    lam_value = real_option("lam", lam, low=-np.inf)
    if drift not in DRIFTS:
        raise ValueError(
            f"drift: choose one of {', '.join(map(repr, DRIFTS))}, got {drift!r}{suggestion(drift, DRIFTS)}"
        )
    names = (basis,) if isinstance(basis, str) else basis
    if not isinstance(names, tuple | list) or not names or any(b not in BASES for b in names):
        raise ValueError(f"basis: a non-empty tuple of {', '.join(map(repr, BASES))}, got {basis!r}")
    if laplacian is not None and not callable(laplacian):
        raise TypeError(f"laplacian: must be callable as laplacian(x) -> (rows,) or None, got {laplacian!r}")
    return lam_value, tuple(dict.fromkeys(names))


def _reward_terms(
    reward: Callable[[Tensor], Tensor], laplacian: Callable[[Tensor], Tensor] | None, x: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``r(x)``, ``grad r(x)`` and (with a ``probe``) ``lap r(x)``: the given ``laplacian``, else the Hutchinson
    estimate ``z . (d grad r / dx) z`` by double backward; zeros without a probe."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        r = reward(leaf)
        if not isinstance(r, Tensor) or r.shape != (x.shape[0],):
            raise ValueError(f"reward: must return one value per row, shape ({x.shape[0]},)")
        if not r.requires_grad:
            raise TypeError("reward: DriftLite needs its gradient, but the reward's output carries no autograd graph")
        want_lap = probe is not None and laplacian is None
        (grad,) = torch.autograd.grad(r.sum(), leaf, create_graph=want_lap)
        if probe is None:
            lap = torch.zeros_like(r)
        elif laplacian is not None:
            lap = laplacian(x)
        elif grad.requires_grad:
            (hz,) = torch.autograd.grad((grad * probe).sum(), leaf)
            lap = (probe * hz).flatten(1).sum(1)
        else:  # a reward linear in x
            lap = torch.zeros_like(r)
    return r.detach(), grad.detach(), lap.detach()


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    z = torch.randint(0, 2, like.shape, generator=generator, device=device).to(like.device, like.dtype)
    return 2.0 * z - 1.0


def driftlite(
    model: Callable[..., Tensor] | Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    reward: Callable[[Tensor], Tensor] | None = None,
    nfe: int | None = None,
    spacing: SpacingLike | None = None,
    prediction: str = "auto",
    generator: torch.Generator | None = None,
    *,
    lam: float = 1.0,
    drift: str = "vcg",
    basis: tuple[str, ...] = BASES,
    laplacian: Callable[[Tensor], Tensor] | None = None,
    particles: int | None = None,
    steps: int | None = None,
    proposal: str = "dpmpp_2m_sde",
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    ridge: float = 1e-8,
    model_kwargs: Mapping[str, Any] | None = None,
    calls: CallCount | None = None,
) -> SMCResult:
    """DriftLite (module docstring): K particles per prompt for ``p(x) exp(lam reward(x))``.

    Args:
        model, noise, schedule, nfe, spacing, prediction, generator, particles, steps, proposal, resample,
            ess_threshold, model_kwargs, calls: as :func:`~fewstep.posterior.smc.smc` (``noise``: ``(B, K, ...)``).
        reward: a differentiable ``reward(x) -> (rows,)`` of the state (e.g. a measurement's ``log_likelihood``).
        lam: the tilt's strength.
        drift: ``"vcg"`` (the controlled drift), ``"guidance"`` (``c^2 grad h``) or ``"none"``.
        basis: VCG's fields, ``("reward", "score")`` (default) or one of them.
        laplacian: ``laplacian(x) -> (rows,)``, the reward's Laplacian, if known (else one Hutchinson probe).
        ridge: VCG's relative ridge (``vcg_coefficients``).
    Returns: the weighted particles as an :class:`~fewstep.posterior.smc.SMCResult`.
    """
    lam_value, names = _check(reward, lam, drift, basis, laplacian)
    assert reward is not None
    scheme = check_resampler(resample)
    threshold = check_threshold(ess_threshold)
    ridge = real_option("ridge", ridge)
    chain = Chain.build(
        model, noise, schedule, nfe, steps, spacing, prediction, generator, model_kwargs, calls, particles, proposal
    )
    b, k = chain.prompts, chain.particles
    vcg = drift == "vcg"
    use_score = vcg and "score" in names
    alpha, sigma = chain.nodes.alpha.astype(np.float64), chain.nodes.sigma.astype(np.float64)
    lam_at = (lam_value * alpha**2 / (alpha**2 + sigma**2)).tolist()  # h_i = lam kappa_i r, kappa = 1 at sigma = 0
    x = noise.reshape(b * k, *noise.shape[2:]).to(chain.dtype).clone()
    ess, flags = [], []
    try:
        state = _node(chain, reward, laplacian, x, None, 0, vcg, use_score, generator)
        log_w = (lam_at[0] * state.acc).to(torch.float64).reshape(b, k)
        ess.append(effective_sample_size(log_w))
        for i in range(chain.steps):
            low = ess[-1] < threshold * k
            flags.append(low)
            if threshold > 0.0 and bool(low.any()):  # one host read per step, as the engine
                state, log_w = _resample(state, log_w, low, scheme, generator)
            mean = chain.mean(i, state.x, state.x0, state.eps, state.prev)
            c = chain.std(i)
            ratio, g_u = None, None
            if c > 0.0 and drift != "none":
                assert state.grad is not None
                u = lam_at[i + 1] * state.grad
                if vcg:
                    extra, g_u = _control(chain, i, state, mean, (lam_at[i], lam_at[i + 1]), c, log_w, names, ridge)
                    u = u + extra
                shifted = mean + (c * c) * u
                x = shifted + c * chain.draw(i, mean)
                ratio = gaussian_log_prob(x, mean, c) - gaussian_log_prob(x, shifted, c)
            else:
                x = mean + c * chain.draw(i, mean) if c > 0.0 else mean
            new = _node(chain, reward, laplacian, x, state, i + 1, vcg, use_score, generator)
            if g_u is not None:  # VCG: the Fokker-Planck weight g_u ds (module docstring)
                inc = g_u
            else:  # the exact discrete ratio
                inc = lam_at[i + 1] * new.acc - lam_at[i] * state.acc
                inc = inc if ratio is None else inc + ratio
            log_w = log_w + inc.to(torch.float64).reshape(b, k)
            ess.append(effective_sample_size(log_w))
            state = new
    finally:
        chain.finish(x, calls)
    samples = x.reshape(noise.shape).to(noise.dtype)
    return SMCResult(samples, normalise(log_w), torch.stack(ess), torch.stack(flags), chain.calls)


def _node(
    chain: Chain,
    reward: Callable[[Tensor], Tensor],
    laplacian: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    previous: _Particles | None,
    i: int,
    vcg: bool,
    use_score: bool,
    generator: torch.Generator | None,
) -> _Particles:
    """The particles at node ``i``: the network's ``x0_hat``, ``eps_hat`` (none at the clean end), and the reward
    terms. Slots: ``grad`` the reward's gradient, ``acc`` its value, ``stat`` ``(N, 2)`` its Laplacian and the
    score's divergence (VCG's probes; zeros otherwise)."""
    final = i == chain.steps
    probe = _rademacher(x, generator) if vcg and not final and chain.std(i) > 0.0 else None
    if final:
        assert previous is not None
        x0, eps, div_s = x, previous.eps, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    else:
        x0, eps, div_s = _evaluate(chain, x, i, probe if use_score else None)
    r, grad, lap = _reward_terms(reward, laplacian, x, probe)
    prev = previous.x0 if previous is not None else x0
    return _Particles(x, x0, eps, prev, grad, r, torch.stack([lap, div_s], 1))


def _evaluate(chain: Chain, x: Tensor, i: int, probe: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(x0_hat, eps_hat, div s)`` at node ``i``; with a ``probe`` the score's divergence ``-z . (d eps/dx) z /
    sigma`` by one backward pass through the network (counted), else zeros."""
    if probe is None:
        with torch.no_grad():
            x0, eps = chain.evaluate(x, i)
        return x0, eps, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    _, sigma = chain.alpha_sigma(i)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        x0, eps = chain.evaluate(leaf, i)
        if not eps.requires_grad:
            raise TypeError(
                "model: VCG's score basis needs the network's Jacobian, but its output carries no autograd graph "
                "(a model that detaches); use basis=('reward',)"
            )
        (jz,) = torch.autograd.grad(eps, leaf, probe)
    chain.calls.backward += 1
    div_s = -(probe * jz).flatten(1).sum(1) / sigma
    return x0.detach(), eps.detach(), div_s.detach()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _control(
    chain: Chain,
    i: int,
    state: _Particles,
    mean: Tensor,
    lams: tuple[float, float],
    c: float,
    log_w: Tensor,
    names: tuple[str, ...],
    ridge: float,
) -> tuple[Tensor, Tensor]:
    """VCG at node ``i`` (module docstring): the extra drift ``theta_1 grad h + theta_2 s`` (``theta`` per prompt)
    and the particles' log-weight increment ``g_u`` (``(N,)``)."""
    assert state.grad is not None
    lam_now, lam_next = lams
    _, sigma = chain.alpha_sigma(i)
    grad_h = lam_next * state.grad
    score = -state.eps / sigma
    lap_h, div_s = lam_next * state.stat[:, 0], state.stat[:, 1]
    toward = score + grad_h
    g0 = (lam_next - lam_now) * state.acc + _dot(mean - state.x, grad_h) + 0.5 * c * c * (lap_h + _dot(grad_h, grad_h))
    fields = {"reward": (grad_h, lap_h), "score": (score, div_s)}
    chosen = [fields[n] for n in names]
    basis = torch.stack([c * c * (div + _dot(phi, toward)) for phi, div in chosen], -1)
    b, k = log_w.shape
    theta = vcg_coefficients(g0.reshape(b, k), basis.reshape(b, k, -1), log_w, ridge).to(state.x.dtype)
    theta = theta.repeat_interleave(k, dim=0)  # (B*K, P)
    shape = (-1,) + (1,) * (state.x.ndim - 1)
    out = torch.zeros_like(state.x)
    for j, (phi, _) in enumerate(chosen):
        out = out + theta[:, j].reshape(shape) * phi
    return out, g0 + (theta * basis).sum(1)
