"""The solver side of CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
Models"): what a solver with the :attr:`~fewstep.solvers.base.Solver.cfg_pp` capability does in its CFG++ form.

A CFG++ rule (:class:`~fewstep.guidance.CFGPlusPlus`) answers a request at ``x`` with the guided clean sample and the
UNconditional noise prediction,

    x0_hat = x0_u + lam (x0_c - x0_u),        eps_hat = eps_u,

a pair that no longer satisfies ``x = alpha x0_hat + sigma eps_hat``. The unconditional clean sample is the one that
``eps_hat`` implies, ``x0_u = (x - sigma eps_hat) / alpha`` (:func:`unconditional_x0`). The CFG++ form of a solver
takes the published CFG++ update (Chung et al. Alg. 1 for DDIM; ComfyUI's ``*_cfg_pp`` samplers for the others):

- first order (DDIM, Euler, Euler ancestral, DDPM): renoise the guided clean sample with the unconditional noise,
  ``x_t = alpha_t x0_hat + c_eps eps_hat (+ c_z z)``, which is already DDIM's and the ancestral samplers' own update
  in ``(x0_hat, eps_hat)`` form (Euler's CFG++ form is DDIM's update,
  :func:`fewstep.solvers.ode.ddim.renoise_steps`);
- the data-prediction multisteps (:func:`run_guided_plan`): the history holds the unconditional clean samples ``U_j``
  and the step is ``x_t = ratio x_s + sum_j w_j U_{i-j} + guided (x0_hat - U_i) (+ noise z)``, the solver's own
  plan with ``guided`` adding the guidance vector (:func:`guided_rows`). DPM-Solver++(2M) CFG++ (ComfyUI
  ``sample_dpmpp_2m_cfg_pp``) has ``guided = ratio alpha_s + w_0``:
  ``x_t = alpha_t x0_hat + sigma_t eps_hat + alpha_t (1 - e^{-h}) / (2 r) (x0_hat - U_{i-1})``;
  ComfyUI's ``res_multistep`` with ``cfg_pp`` has ``guided = ratio alpha_s`` on its second-order steps (the RES step
  on the unconditional estimates from the shifted state ``x_s + alpha_s (x0_hat - U_i)``) and DDIM's CFG++ step on
  its first-order ones;
- DPM-Solver++(2S) (ancestral or not): the midpoint from ``U_i``, the step on the midpoint's unconditional estimate,
  plus ``alpha_t (x0_hat - U_i)`` (:func:`fewstep.solvers.ode.dpmpp.run_midpoint_cfg_pp`);
- gradient estimation: DDIM's CFG++ step plus the gradient-estimation correction on the unconditional velocities.

For an ordinary evaluation (``eps_hat`` consistent with ``x0_hat``) ``U_i = x0_hat`` and every CFG++ form is its
solver's update, up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor

from ..context import RunContext
from ..nodes import NodeTable
from .base import Steps
from .stochastic import noise_levels


def unconditional_x0(x: Tensor, eps: Tensor, alpha: float, sigma: float, x0: Tensor) -> Tensor:
    """The clean sample implied by ``eps``, ``(x - sigma eps) / alpha``; at ``alpha = 0``, where an evaluation does
    not determine it, ``x0`` (the guided one) stands in (only a multistep history holds it there, and the step after
    such a node is first order)."""
    if alpha == 0.0:
        return x0
    return (x - sigma * eps) / alpha


class GuidedStep(NamedTuple):
    """One planned CFG++ multistep step ``x_t = ratio x_s + sum_j weights[j] U_{i-j} + guided (x0_hat - U_i) +
    noise z`` (module docstring)."""

    ratio: float
    weights: list[float]
    guided: float
    noise: float = 0.0


def guided_rows(
    plan: Sequence[tuple[float, list[float], float]], nodes: NodeTable, current_guided: Callable[[int], bool]
) -> list[GuidedStep]:
    """The CFG++ rows of a data-prediction plan ``x_t = ratio x_s + sum_j w_j D_{i-j} + noise z``: ``guided = ratio
    alpha_s + w_0`` where the step's current data estimate is the guided one (``current_guided(order)``, the order
    being the number of weights), else ``ratio alpha_s``, so that the step starts from ``alpha_s x0_hat + sigma_s
    eps_hat``."""
    alpha = nodes.alpha.tolist()
    rows = []
    for i, (ratio, weights, noise) in enumerate(plan):
        guided = ratio * alpha[i] + (weights[0] if current_guided(len(weights)) else 0.0)
        rows.append(GuidedStep(ratio, weights, guided, noise))
    return rows


def run_guided_plan(
    x: Tensor, nodes: NodeTable, ctx: RunContext, plan: Sequence[GuidedStep], history_size: int
) -> Steps:
    """The CFG++ step loop of a data-prediction multistep solver from its :func:`guided_rows`: step i is
    ``x_t = ratio x_s + sum_j w_j U_{i-j} + guided (x0_hat - U_i) + noise z``, ``U`` the unconditional clean
    samples."""
    level = noise_levels(nodes)
    alpha, sigma = nodes.alpha.tolist(), nodes.sigma.tolist()
    history: list[Tensor] = []
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        u = unconditional_x0(x, eps, alpha[i], sigma[i], x0)
        history = [u, *history[: history_size - 1]]
        step = plan[i]
        x = x * step.ratio
        for w, d in zip(step.weights, history, strict=False):
            x.add_(d, alpha=w)
        if step.guided:
            x.add_(x0 - u, alpha=step.guided)
        if step.noise:
            x = ctx.transition(i, x, level[i], level[i + 1], step.noise)[0]
        ctx.emit(i, x, x0)
    return x
