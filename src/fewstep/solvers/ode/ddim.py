"""DDIM (Song, Meng & Ermon 2021), deterministic (eta = 0)."""

from __future__ import annotations

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register


@register
class DDIM(Solver):
    """``x_{i+1} = alpha_{i+1} x0_hat(x_i) + sigma_{i+1} eps_hat(x_i)`` (DDIM eq. 12 with eta = 0).

    Its CFG++ form (:mod:`fewstep.solvers.cfg_pp`) is the same update: with a CFG++ rule's pair (guided ``x0_hat``,
    unconditional ``eps_hat``) it is Chung et al. 2024, Alg. 1.
    """

    name = "ddim"
    order = 1
    lambda_based = False
    cfg_pp = True
    summary = "DDIM: re-noise the data estimate with the predicted noise"
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models"
    peers = "diffusers DDIMScheduler"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        return (yield from renoise_steps(x, nodes, ctx))


def renoise_steps(x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
    """DDIM's loop ``x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} eps_hat``."""
    alpha, sigma = nodes.alpha.tolist(), nodes.sigma.tolist()
    for i in ctx.loop():
        x0, eps = yield x, nodes.node(i)
        x = alpha[i + 1] * x0 + sigma[i + 1] * eps
        ctx.emit(i, x, x0)
    return x
