"""The EDM stochastic sampler (Karras et al. 2022, Alg. 2): "churn" noise, then a Heun step of the PF-ODE.

In k-diffusion's levels ``s = sigma/alpha`` (EDM's sigma) and the scaled state ``y = x/alpha``, step i is

- ``gamma_i = min(s_churn/N, sqrt(2) - 1)`` if ``s_tmin <= s_i <= s_tmax``, else 0 (N = the number of steps);
- raise the noise level to ``s_hat = (1 + gamma_i) s_i`` by adding fresh noise:
  ``y_hat = y_i + sqrt(s_hat^2 - s_i^2) s_noise z`` (the forward process from s_i to s_hat; in x:
  ``x_hat = (alpha_hat/alpha_i) x_i + alpha_hat sqrt(s_hat^2 - s_i^2) s_noise z``);
- a Heun step of the PF-ODE from ``s_hat`` to ``s_{i+1}`` (as fewstep's ``heun``, in its ODE frame: sigma/alpha,
  or t for flows), Euler on the step to sigma = 0.

fewstep specifics: the model can only be evaluated on the schedule's range, so ``s_hat`` is capped at the
level of ``t_max`` (no churn on the first step from ``t_max``; EDM's own ``s_tmax`` = 50 < 80 avoids it too);
there is no churn where alpha = 0 (sigma/alpha = inf). The churn noise is drawn as ``noise(s_i, s_{i+1})``,
the step's interval, so that a Brownian noise sampler gives independent noise on the steps (the intervals
``[s_i, s_hat]`` overlap from step to step on fine grids).

Log-probabilities (``trajectory=``). Step i is not a Gaussian transition from ``x_i`` to ``x_{i+1}`` (the Heun
map after the churn is nonlinear in the noise through the model), but its noise is: the record of step i is the
churn ``x_hat_i ~ N(c_i x_i, std_i^2 I)`` with ``c_i = alpha_hat/alpha_i`` and
``std_i = alpha_hat sqrt(s_hat^2 - s_i^2) s_noise`` (``Trajectory.noisy[i] = x_hat_i``). Since ``x_i`` is the
deterministic Heun map of ``x_hat_{i-1}``, the churned states form a Markov chain with Gaussian transitions
``x_hat_i | x_hat_{i-1} ~ N(c_i Heun_{i-1}(x_hat_{i-1}), std_i^2 I)`` whose mean carries the model, and the
recorded log-probabilities are that chain's (with ``grad=True`` their means keep the graph to the model).
"""

from __future__ import annotations

from torch import Tensor

from ...context import RunContext
from ...nodes import NodeTable
from ..base import Solver, Steps, register
from ..frame import heun_step
from ..stochastic import ChurnOptions, noise_levels


@register
class EDMStochastic(ChurnOptions, Solver):
    """EDM Alg. 2. Defaults: the paper's ImageNet-64 settings (``s_churn=40``, ``s_tmin=0.05``, ``s_tmax=50``)
    with ``s_noise=1`` (the paper's 1.003 compensates a trained network's loss of detail; pass it explicitly)."""

    name = "edm_sde"
    order = 2
    nfe_per_step = 2
    stochastic = True
    records_transitions = True
    lambda_based = False
    summary = "EDM stochastic sampler: churn noise up to s_hat, then a Heun step of the PF-ODE"
    paper = "Karras et al. 2022 (EDM), Alg. 2"
    peers = "k-diffusion sample_heun(s_churn, s_tmin, s_tmax, s_noise)"

    def solve(self, x: Tensor, nodes: NodeTable, ctx: RunContext) -> Steps:
        tau, c = nodes.ode_frame()
        level = noise_levels(nodes)
        orders = self.step_orders(nodes)
        vel = [nodes.ode_velocity(p) if p is not None else (0.0, 0.0) for p in nodes.points]
        plan = []
        for i in range(nodes.steps):
            churn = self.churn(nodes, ctx, i)
            if churn is None:
                p = nodes.node(i)
                tau_hat, c_hat = float(tau[i]), float(c[i])
            else:
                p = churn.point
                tau_hat, c_hat = nodes.frame_at(p)
            # Heun in the ODE frame: x_{i+1} = c_{i+1} (x_hat / c_hat + (tau_{i+1} - tau_hat) (f_hat + f_{i+1}) / 2)
            step = (float(c[i + 1]) / c_hat, float(c[i + 1]) * (float(tau[i + 1]) - tau_hat))
            plan.append((p, churn, nodes.ode_velocity(p), step))
        for i in ctx.loop():
            p, churn, velocity, step = plan[i]
            if churn is not None:  # x_hat ~ N((alpha_hat/alpha_i) x_i, std^2 I), recorded as step i's transition
                x = ctx.transition(i, churn.scale * x, level[i], level[i + 1], churn.std)[0]
            x, x0 = yield from heun_step(x, p, velocity, step, (nodes.points[i + 1], vel[i + 1]), orders[i])
            ctx.emit(i, x, x0)
        return x
