"""The Itô density estimator: the log-density of each of several models at the states of one reverse-SDE trajectory,
from the models' noise predictions alone (Skreta et al. 2025, "The Superposition of Diffusion Models Using the Itô
Density Estimator").

Derivation for fewstep's schedules. The forward process ``x_t = alpha_t x0 + sigma_t eps`` is the linear SDE
``dx = f x dt + g dW`` with ``f = alpha'/alpha`` and ``g^2 = d(sigma^2)/dt - 2 f sigma^2``; a model's marginal ``q_t``
solves the Fokker-Planck equation ``d_t q = -div(f x q) + g^2/2 lap(q)``, and its score is ``s = -eps_hat/sigma``.
A sampler runs backwards, ``tau = -t``, along ``dx = u dtau + g dW_bar`` with ANY drift ``u`` (one model's reverse
SDE, or a combination of several). Itô's formula for ``log q_t(x)`` along that path, with ``d_t log q`` taken from the
Fokker-Planck equation, has the Laplacian of ``log q`` twice with opposite signs, and they cancel exactly when the
path's noise is the forward process's ``g``:

    d log q_t(x) = <s, dx> + (D f + f <x, s> - g^2/2 |s|^2) dtau        (D: the dimension; the paper's estimator).

No divergence and no extra network call is needed: every model's ``eps_hat`` at the path's states is enough. The
probability-flow ODE (or any path with another noise level, e.g. ``eta != 1``) keeps ``lap(log q)`` in the formula,
``d log q = -div(v) dtau`` for the ODE, which needs each model's divergence (Hutchinson's trace estimator, one
backward pass per model and step); this estimator holds only along reverse-SDE paths.

In the scaled state ``y = x/alpha`` (k-diffusion's frame, level ``s~ = sigma/alpha = exp(-lambda)``) the forward
process is ``dy = sqrt(d(s~^2)/dt) dW`` (``f = 0``), ``log q_t(x) = log p_t(y) - D log alpha_t`` and the score is
``-eps_hat/s~``; the term ``D log alpha_t`` is the same for every model, so comparisons between models only need

    d log p(y) = <grad log p, dy> - 1/2 d(s~^2)/dt |grad log p|^2 dtau.

Discretisation. Between consecutive evaluations ``(x_k, lambda_k)`` and ``(x_{k+1}, lambda_{k+1})``, ``h`` the
log-SNR step, with model i's ``eps_i`` at ``(x_k, lambda_k)`` (the left point, as Itô's integral needs), and
``w = e^{2h} - 1``:

    log p_i(y_{k+1}) - log p_i(y_k) ~= <eps_i, e^{2h} x_k/sigma_k - e^{h} x_{k+1}/sigma_{k+1}> - w/2 |eps_i|^2,

which is the formula above with ``dy`` scaled by ``e^{2h}`` and ``d(s~^2)`` replaced by ``w s~_k^2``: both agree with
it to first order in ``h``. The factors are chosen for the step the listed solvers take (the DDPM posterior step,
``y_{k+1} = y_k - s~_k (1 - e^{-2h}) eps_bar + s~_k e^{-h} sqrt(1 - e^{-2h}) z`` to first order, ``eps_bar`` the
combined prediction): along it every increment has mean ``w (<eps_i, eps_bar> - |eps_i|^2/2)`` and noise
``sqrt(w) <eps_i, z>``, the continuous estimator's relation between drift and noise over a time of ``w``. The
plain left-point rule (factors 1 and ``1 - e^{-2h}``) has the drift ``e^{2h}`` times too large for that noise, which
biases the mixture weights of :mod:`~fewstep.guidance.superposition`'s OR towards the larger prior at a few dozen
steps; with these factors OR's weights stay a martingale to second order in the step and its samples match the
exact mixture sampled by the same solver. Only the per-sample scalars ``<eps_i, x_k>/sigma_k`` and ``|eps_i|^2`` and
the tensors ``eps_i`` are kept between evaluations. At the start every model's log-density is set to 0: at
``alpha = 0`` (and nearly so at the usual ``t_max``) the models' marginals are the same Gaussian. A step from
``alpha = 0`` (a flow's first step) adds nothing for the same reason.

Which solvers: those whose consecutive evaluations are consecutive states of one path carrying the reverse SDE's
noise (variance ``sigma_{k+1}^2 (1 - e^{-2h})`` to first order): one evaluation per step at ``eta = 1``,
``s_noise = 1`` (:data:`ITO_SOLVERS`). ``euler_ancestral``, ``ddpm``, ``seeds_1``, ``res_multistep_ancestral``,
``dpmpp_2m_sde`` and ``dpmpp_3m_sde`` take the DDPM posterior step (the last three up to their higher-order drift);
``dpm_solver_1_sde`` and ``euler_maruyama`` take other first-order steps, for which the estimator is first-order
consistent only. Multi-stage solvers evaluate at stage states that are not on the path; ODE solvers add no noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..model.point import Point

#: Solvers whose runs are reverse-SDE paths with one evaluation per state (at ``eta = 1``, ``s_noise = 1``).
ITO_SOLVERS: tuple[str, ...] = (
    "euler_ancestral",
    "ddpm",
    "dpm_solver_1_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "euler_maruyama",
    "seeds_1",
    "res_multistep_ancestral",
)


class _Left(NamedTuple):
    """What the next increment needs from the previous evaluation: its ``lam``, each model's ``eps`` (a list) and the
    per-sample ``<eps_i, x>/sigma`` and ``|eps_i|^2`` (shape (B, M))."""

    lam: float
    eps: list[Tensor]
    dot: Tensor
    sq: Tensor


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """float64 where the device has it (the increments are differences of O(D) terms), else float32."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def flat(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as (B, -1) in ``dtype``."""
    return t.reshape(t.shape[0], -1).to(dtype)


class ItoDensity:
    """The log-densities ``log p_i`` (scaled state, up to a term common to all models) of M models along one run,
    updated at each evaluation by :meth:`observe`. One instance per run."""

    def __init__(self) -> None:
        self.log_p: Tensor | None = None  # (B, M), at the last observed state
        self._left: _Left | None = None
        self.variance: float | None = None  # e^{2h} - 1 of the last increment (h its lambda step)

    def observe(self, x: Tensor, p: Point, eps: Sequence[Tensor]) -> Tensor:
        """The models' log-densities at ``x`` (shape (B, M)), by the increment from the previous evaluation; ``eps``
        are the models' noise predictions at ``(x, p)``, kept for the next increment."""
        dtype = accumulation_dtype(x)
        xf = flat(x, dtype)
        left = self._left
        if self.log_p is None:
            self.log_p = xf.new_zeros(x.shape[0], len(eps))
        elif left is not None:
            if not p.lam > left.lam:
                raise ValueError(
                    f"solver: the Itô density estimator needs evaluations along one path with the noise level falling "
                    f"between them (lambda {left.lam:.6g} then {p.lam:.6g}); use a one-evaluation-per-step SDE solver: "
                    f"{', '.join(ITO_SOLVERS)}"
                )
            if math.isfinite(left.lam):  # a step from alpha = 0 adds the same to every model: nothing
                h = p.lam - left.lam
                ahead = torch.stack([(flat(e, dtype) * xf).sum(1) for e in left.eps], 1) * (math.exp(h) / p.sigma)
                self.variance = math.expm1(2.0 * h)
                self.log_p = self.log_p + math.exp(2.0 * h) * left.dot - ahead - 0.5 * self.variance * left.sq
        if p.sigma > 0:
            ef = [flat(e, dtype) for e in eps]
            dot = torch.stack([(e * xf).sum(1) for e in ef], 1) / p.sigma
            sq = torch.stack([e.square().sum(1) for e in ef], 1)
            self._left = _Left(p.lam, list(eps), dot, sq)
        else:  # no noise left: no further increment
            self._left = None
        return self.log_p
