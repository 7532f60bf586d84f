"""Latent-consistency multistep sampling (Luo et al. 2023, "Latent Consistency Models", Alg. 1; Song et al. 2023,
"Consistency Models", Alg. 1; ComfyUI ``sample_lcm``): denoise, then re-noise to the next level.

Each step takes the model's data estimate at the current node and draws a fresh sample of the forward process at
the next one,

    x_{i+1} = alpha_{i+1} D(x_i, t_i) + sigma_{i+1} s_i z_i,        z_i ~ N(0, I),

and the step to the clean end returns ``alpha D`` there (no noise). Nothing of ``x_i`` but its data estimate
survives a step, so this is not an ODE solver and has no order: for a consistency model (whose ``D`` maps every
point of a trajectory to its origin) every step lands on the data distribution's forward marginal, and more steps
refine the sample; for an ordinary denoiser the sample is a denoiser fixed-point iteration whose error does not
vanish with the step count (``tests/test_comfyui_only.py`` checks one step against this formula computed by hand).

Options (ComfyUI's): ``s_noise`` scales the drawn noise, ``s_noise_end`` (default ``s_noise``) makes the scale
linear over the steps, ``s_i = s_noise + (s_noise_end - s_noise) i / (N - 1)``; ``noise_clip_std > 0`` clamps the
drawn normal to ``+- noise_clip_std`` times its standard deviation over the whole batch tensor (a sample then
depends on its batch, and the clamped draw is not Gaussian: no trajectory recording).

Outside ``sde_window`` a step re-noises with the model's own noise estimate, ``x_{i+1} = alpha_{i+1} D + sigma_{i+1}
eps_hat`` (DDIM), the deterministic counterpart.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ...options import real_option
from ..base import Solver, Steps, register
from ..stochastic import noise_levels

PAPER_LCM = "Luo et al. 2023, Latent Consistency Models; Song et al. 2023, Consistency Models (multistep sampling)"


class RenoiseStep(NamedTuple):
    """One planned step ``x_{i+1} = c_x0 D + c_eps eps_hat + std z`` (``std = 0``: no draw)."""

    c_x0: float
    c_eps: float
    std: float


@register
class LCM(Solver):
    name = "lcm"
    converges = False  # module docstring: a denoiser fixed-point iteration for an ordinary model
    order = 1
    stochastic = True
    records_transitions = True
    summary = "latent-consistency multistep sampling: the data estimate, re-noised to the next level"
    paper = PAPER_LCM
    peers = "ComfyUI sample_lcm"

    def __init__(self, s_noise: float = 1.0, s_noise_end: float | None = None, noise_clip_std: float = 0.0):
        self.s_noise = real_option("s_noise", s_noise)
        self.s_noise_end = None if s_noise_end is None else real_option("s_noise_end", s_noise_end)
        self.noise_clip_std = real_option("noise_clip_std", noise_clip_std)

    def batch_dependence(self) -> str | None:
        if self.noise_clip_std > 0.0:
            return "lcm: noise_clip_std > 0 clamps the noise by its standard deviation over the whole batch"
        return None

    def recording_refusal(self) -> str | None:
        if self.noise_clip_std > 0.0:
            return "trajectory: 'lcm' with noise_clip_std > 0 clamps its draws, which are then not Gaussian"
        return super().recording_refusal()

    def noise_scale(self, i: int, steps: int) -> float:
        """``s_i``: ``s_noise`` to ``s_noise_end`` linearly over the steps."""
        end = self.s_noise if self.s_noise_end is None else self.s_noise_end
        return self.s_noise + (end - self.s_noise) * (i / (steps - 1) if steps > 1 else 0.0)

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        a, s = nodes.alpha, nodes.sigma
        level = noise_levels(nodes)
        plan = []
        for i in range(nodes.steps):
            a_t, s_t = float(a[i + 1]), float(s[i + 1])
            if s_t == 0.0 or not ctx.stochastic_step(i):  # the clean end, or DDIM outside the SDE window
                plan.append(RenoiseStep(a_t, s_t, 0.0))
            else:  # x_{i+1} = alpha_{i+1} D + sigma_{i+1} s_i z
                plan.append(RenoiseStep(a_t, 0.0, s_t * self.noise_scale(i, nodes.steps)))
        clip = self.noise_clip_std
        for i in ctx.loop():
            x0, eps = yield x, nodes.node(i)
            step = plan[i]
            x = x0 * step.c_x0  # a new tensor: the model's output is never changed
            if step.c_eps:
                x.add_(eps, alpha=step.c_eps)
            if step.std:
                z = ctx.draw(level[i], level[i + 1], x)
                if clip > 0.0:  # clamp to +- clip std(z) over the whole tensor
                    bound = clip * z.std()
                    z = z.clamp(min=-bound, max=bound)
                    x.add_(z, alpha=step.std)
                else:
                    mean = x.clone() if ctx.trajectory is not None else x
                    x.add_(z, alpha=step.std)
                    ctx.record(i, mean, step.std, x, z)
            ctx.emit(i, x, x0)
        return x
