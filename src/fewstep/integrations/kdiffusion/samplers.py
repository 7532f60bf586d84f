"""k-diffusion's and ComfyUI's samplers by their own names, with exactly the reference's keyword options
(:data:`fewstep.integrations.kdiffusion.KSAMPLERS`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...adaptive import AdaptiveStats, PIDController, sample_adaptive
from ...nodes import NodeTable
from ...noise.levels import brownian_level_sampler
from ...options import real_option
from ...sampling import sample
from ...schedules import EDM, Flow
from ...solvers import Solver
from ...solvers.frame import FrameMultistep, frame_orders
from ...solvers.ode.heunpp import HeunPP2Churn
from ...solvers.ode.lms import LMS
from ...solvers.ode.pndm import IPNDM, IPNDMVariable
from ...solvers.sde.ancestral_dpm import DPM2Churn, DPMFastAncestral
from ...solvers.sde.edm_sde import EDMStochastic
from .cfg_pp import sample_gradient_estimation_cfg_pp
from .run import (
    KCallback,
    Model,
    NoiseSampler,
    _Grid,
    _integer,
    _Model,
    _noise_options,
    _run,
    _split_seed,
    _unsupported,
    is_rectified_flow,
    model_sampling,
)

# --- k-diffusion's samplers ---------------------------------------------------------------------------------


class _EulerChurn(EDMStochastic):
    """EDM's churn, then an Euler step (k-diffusion's ``sample_euler`` with ``s_churn > 0``): ``edm_sde`` at order 1."""

    name = "euler"
    order = 1
    nfe_per_step = 1

    def step_orders(self, nodes: NodeTable) -> list[int]:
        return [1] * nodes.steps


def _churned(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None, callback: KCallback | None,
    disable: bool | None, method: str, churn: tuple[float, float, float, float],
) -> Tensor:  # fmt: skip
    """Euler or Heun with EDM's churn: ``gamma = min(s_churn/N, sqrt(2) - 1)`` where ``s_tmin <= sigma_i <= s_tmax``,
    ``sigma_hat = (1 + gamma) sigma_i``, ``x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z`` (z from torch's global
    generator, as the reference draws it)."""
    s_churn = real_option("s_churn", churn[0])
    s_tmin, s_tmax = real_option("s_tmin", churn[1]), real_option("s_tmax", churn[2], allow_inf=True)
    s_noise = real_option("s_noise", churn[3])
    grid = _Grid.of(sigmas)
    gamma = min(s_churn / grid.steps, math.sqrt(2.0) - 1.0)
    inside = [s_tmin <= float(s) <= s_tmax for s in grid.levels]
    if gamma == 0 or not any(inside):  # no step churns: the ODE solver
        return _run(model, x, grid, extra_args, callback, disable, method, noise="global")
    if is_rectified_flow(model_sampling(model)):
        raise ValueError("s_churn: EDM's churn raises sigma above the grid, outside a rectified-flow model's [0, 1]; "
                         "use s_churn=0 (or an ancestral / SDE sampler) with flow models")  # fmt: skip
    churned: dict[str, Callable[..., Solver]] = {
        "heun": EDMStochastic, "euler": _EulerChurn, "dpm_solver_2": DPM2Churn, "heunpp2": HeunPP2Churn
    }  # fmt: skip
    solver = churned[method](s_churn, s_tmin, s_tmax, s_noise)

    def sigma_hat(i: int) -> Tensor:
        return grid.sigmas[i] * ((gamma if inside[i] else 0.0) + 1.0)

    headroom = (1.0 + gamma) * (1.0 + 1e-9)  # the first level churns above sigma_max
    return _run(
        model, x, grid, extra_args, callback, disable, solver, noise="global", headroom=headroom, sigma_hat=sigma_hat
    )


def sample_euler(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_euler``: Euler on the probability-flow ODE; ``s_churn > 0`` adds EDM's churn."""
    return _churned(model, x, sigmas, extra_args, callback, disable, "euler", (s_churn, s_tmin, s_tmax, s_noise))


def sample_heun(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_heun``: Heun (EDM Alg. 1, Euler to sigma = 0); ``s_churn > 0``: EDM Alg. 2 (``edm_sde``)."""
    return _churned(model, x, sigmas, extra_args, callback, disable, "heun", (s_churn, s_tmin, s_tmax, s_noise))


def sample_euler_ancestral(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_euler_ancestral``: an Euler step down to ``sigma_down``, then ``sigma_up`` of noise;
    on ComfyUI's rectified-flow models ComfyUI's flow rule (``downstep="flow"`` of fewstep's euler_ancestral)."""
    flow = is_rectified_flow(model_sampling(model))
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "euler_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, downstep="flow" if flow else "scaled",
    )  # fmt: skip


def sample_dpm_2(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpm_2``: DPM-Solver-2 (``dpm_solver_2``: the midpoint rule in sigma with the midpoint at
    the geometric mean), Euler to sigma = 0; ``s_churn > 0`` adds EDM's churn before each step."""
    return _churned(model, x, sigmas, extra_args, callback, disable, "dpm_solver_2", (s_churn, s_tmin, s_tmax, s_noise))


def sample_dpm_2_ancestral(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpm_2_ancestral``: a DPM-Solver-2 step down to ``sigma_down``, then ``sigma_up`` of
    noise (``dpm_2_ancestral``); on ComfyUI's rectified-flow models ComfyUI's ``sample_dpm_2_ancestral_RF``
    (``downstep="flow"``)."""
    flow = is_rectified_flow(model_sampling(model))
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpm_2_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, downstep="flow" if flow else "scaled",
    )  # fmt: skip


def sample_dpmpp_2s_ancestral(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_2s_ancestral``: a DPM-Solver++(2S) step down to ``sigma_down``, then ``sigma_up``
    of noise (``dpmpp_2s_ancestral``); on ComfyUI's rectified-flow models ComfyUI's
    ``sample_dpmpp_2s_ancestral_RF`` (``downstep="flow"``)."""
    flow = is_rectified_flow(model_sampling(model))
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpmpp_2s_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, downstep="flow" if flow else "scaled",
    )  # fmt: skip


def sample_dpmpp_sde(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, r: float = 1 / 2,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_sde`` (``dpmpp_sde``): DPM-Solver++(2S) with the stage at ``r h``, ancestral noise
    after the stage and after the step. Its two draws per step are over overlapping level intervals; without a
    ``noise_sampler`` they are increments of fewstep's Brownian path (as the reference's Brownian tree), seeded by
    ``extra_args["seed"]`` or else by a seed drawn from torch's global generator."""
    grid = _Grid.of(sigmas)
    if noise_sampler is None and (extra_args or {}).get("seed") is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # the reference's tree takes a random seed the same way
        noise_sampler = brownian_level_sampler(grid.schedule(), x, seed)
    return _run(
        model, x, grid, extra_args, callback, disable, "dpmpp_sde", noise="brownian",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, r=r,
    )  # fmt: skip


def sample_dpm_fast(
    model: Model, x: Tensor, sigma_min: float, sigma_max: float, n: int, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 0.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpm_fast``: DPM-Solver-fast (Lu et al. 2022, Sec. 3.4) spending exactly ``n`` model
    evaluations from ``sigma_max`` to ``sigma_min`` (no step to 0): ``floor(n/3) + 1`` steps uniform in log sigma with
    orders ``[3, ..., 3, 2, 1]``, ``[3, ..., 3, 1]`` or ``[3, ..., 3, 2]`` (``dpm_solver_3`` with an NFE budget);
    ``eta > 0``: ancestral steps (:class:`~fewstep.solvers.sde.ancestral_dpm.DPMFastAncestral`). The callback also gets
    the reference's ``t`` and ``t_up`` (``-log sigma``)."""
    lo, hi = real_option("sigma_min", sigma_min), real_option("sigma_max", sigma_max)
    if lo <= 0 or hi <= lo:
        raise ValueError(f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    nfe = _integer("n", n, 1)
    eta = real_option("eta", eta)
    solver: str | Solver = "dpm_solver_3" if eta == 0 else DPMFastAncestral(eta, s_noise)
    real_option("s_noise", s_noise)  # eta = 0 adds no noise for it to scale
    kwargs, seed = _split_seed(model, extra_args)
    calls = _Model(model, kwargs, record=callback is not None)
    schedule = EDM(sigma_min=lo, sigma_max=hi)

    def kcallback(info: dict[str, Any]) -> None:
        assert callback is not None
        sig = torch.tensor(info["t"], dtype=torch.get_default_dtype())  # EDM: the schedule time is sigma
        t, x_i = -sig.log(), calls.take()  # the state the step's data estimate was taken at
        callback({"x": info["x"] if x_i is None else x_i, "i": info["i"], "sigma": sig, "sigma_hat": sig, "t": t,
                  "t_up": t, "denoised": info["denoised"]})  # fmt: skip

    return sample(
        calls, x, schedule, solver,
        nfe=nfe, spacing="logsnr", prediction="sample", time_input="sigma", final="t_min",
        callback=None if callback is None else kcallback, progress=None if disable is None else not disable,
        **_noise_options("comfy", x, seed, noise_sampler, schedule),
    )  # fmt: skip


class _MaxOrder(FrameMultistep):
    """A linear multistep method in sigma on the last ``max_order`` derivatives; ``denoise_end``: the step to
    sigma = 0 is first order (``x = denoised``, ComfyUI's iPNDM)."""

    def __init__(self, max_order: int, denoise_end: bool = False):
        self.max_order, self.denoise_end = max_order, denoise_end

    def step_orders(self, nodes: NodeTable) -> list[int]:
        orders = frame_orders(nodes.ode_frame()[0], self.max_order)
        if self.denoise_end and nodes.clean_end:
            orders[-1] = 1
        return orders


class _LMS(_MaxOrder, LMS):
    pass


class _IPNDM(_MaxOrder, IPNDM):
    pass


class _IPNDMVariable(_MaxOrder, IPNDMVariable):
    pass


def sample_lms(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, order: int = 4,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_lms``: Adams-Bashforth in sigma on the last ``order`` derivatives (exact weights), at
    full order up to the step to sigma = 0."""
    solver = _LMS(_integer("order", order, 1))
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, solver)


def sample_dpmpp_2m(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_2m``: DPM-Solver++(2M), first order on the first step and to sigma = 0."""
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpmpp_2m", lower_order_final=False)


def sample_dpmpp_2m_sde(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, solver_type: str = "midpoint",
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_2m_sde``: SDE-DPM-Solver++(2M) (``solver_type`` "midpoint" or "heun")."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpmpp_2m_sde", noise="brownian",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, solver_type=solver_type, lower_order_final=False,
    )  # fmt: skip


def sample_dpmpp_3m_sde(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_3m_sde``: SDE-DPM-Solver++(3M) with the reference's second-difference weight
    ``H phi_3(-H)`` (fewstep's ``d2_weight="reference"``) and third order to the end."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpmpp_3m_sde", noise="brownian",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, d2_weight="reference", lower_order_final=False,
    )  # fmt: skip


def sample_dpm_adaptive(
    model: Model,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, int]]:
    """k-diffusion's ``sample_dpm_adaptive`` (eta = 0) on fewstep's adaptive DPM-Solver-12/23 (docs/adaptive.md):
    from ``sigma_max`` to ``sigma_min`` (no step to 0), the batch-RMS error norm. The info dict counts fewstep's
    evaluations: a rejected step keeps its first evaluation, one fewer than k-diffusion spends. ``eta > 0`` (the
    ancestral variant) is not available: ValueError."""
    if order not in (2, 3):
        raise ValueError(f"order: choose 2 or 3, got {order!r}")
    _unsupported("eta", real_option("eta", eta), 0.0, "fewstep's adaptive DPM-Solver solves the probability-flow "
                 "ODE only; use eta=0, or a fixed grid with sample_dpmpp_2m_sde for stochastic sampling")  # fmt: skip
    real_option("s_noise", s_noise)  # scales noise that eta = 0 does not add
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler: must be callable as noise_sampler(sigma, sigma_next), got {noise_sampler!r}")
    kwargs, _ = _split_seed(model, extra_args)  # eta = 0: no noise to seed
    stats = AdaptiveStats()
    pid = PIDController(rtol, atol, pcoeff, icoeff, dcoeff, accept_safety, norm="rms", h_init=h_init)

    def kcallback(info: dict[str, Any]) -> None:
        if callback is not None:
            sig = torch.tensor(info["t"], dtype=torch.get_default_dtype())  # EDM: the schedule time is sigma
            callback({"x": info["x"], "i": info["i"], "sigma": sig, "sigma_hat": sig, "denoised": info["denoised"]})

    flow = is_rectified_flow(model_sampling(model))
    out = sample_adaptive(
        lambda x_, sigma_: model(x_, sigma_, **kwargs),
        x,
        (Flow if flow else EDM)(float(sigma_min), float(sigma_max)),
        f"dpm_solver_{order - 1}{order}",
        prediction="sample",
        controller=pid,
        final="t_min",
        stats=stats,
        callback=kcallback if callback is not None else None,
        time_input="t" if flow else "sigma",  # a flow model's sigma is Flow's t
    )
    if not return_info:
        return out
    info = {"steps": stats.accepted + stats.rejected, "nfe": stats.nfe, "n_accept": stats.accepted}
    return out, {**info, "n_reject": stats.rejected}


# --- ComfyUI's samplers -------------------------------------------------------------------------------------


def sample_dpmpp_2m_sde_heun(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, solver_type: str = "heun",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_2m_sde_heun``: ``sample_dpmpp_2m_sde`` with ``solver_type="heun"``."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type
    )


def sample_dpmpp_2m_sde_gpu(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, solver_type: str = "midpoint",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_2m_sde_gpu``: ``sample_dpmpp_2m_sde`` (fewstep's Brownian path is built where the
    state lives)."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type
    )


def sample_dpmpp_2m_sde_heun_gpu(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, solver_type: str = "heun",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_2m_sde_heun_gpu``: ``sample_dpmpp_2m_sde`` with ``solver_type="heun"``."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type
    )


def sample_dpmpp_3m_sde_gpu(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_3m_sde_gpu``: ``sample_dpmpp_3m_sde``."""
    return sample_dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)


def sample_ddpm(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_ddpm``: DDPM's ancestral step (the posterior ``q(x_t | x_s, x0_hat)``) between the levels."""
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, "ddpm", noise_sampler=noise_sampler)


def sample_ipndm(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, max_order: int = 4,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_ipndm``: Adams-Bashforth with equal-step weights in sigma on the last ``max_order``
    derivatives, ``x = denoised`` on the step to sigma = 0."""
    solver = _IPNDM(_integer("max_order", max_order, 1, 4), denoise_end=True)
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, solver)


def sample_ipndm_v(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, max_order: int = 4,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_ipndm_v``: variable-step Adams-Bashforth in sigma on the last ``max_order`` derivatives,
    ``x = denoised`` on the step to sigma = 0. fewstep's weights are exact on any grid (ComfyUI's order-3/4 weights
    only on equal steps: docs/integrations.md)."""
    solver = _IPNDMVariable(_integer("max_order", max_order, 1, 4), denoise_end=True)
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, solver)


def sample_res_multistep(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_res_multistep``: the second-order RES multistep step in lambda (eta = 0, so ``s_noise`` and
    ``noise_sampler`` have no effect, as in the reference)."""
    real_option("s_noise", s_noise)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler: must be callable as noise_sampler(sigma, sigma_next), got {noise_sampler!r}")
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, "res_multistep", lower_order_final=False)


def sample_gradient_estimation(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, ge_gamma: float = 2.0, cfg_pp: bool = False,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_gradient_estimation``: Euler with the derivative ``ge_gamma d_i + (1 - ge_gamma) d_{i-1}``,
    ``x = denoised`` on the step to sigma = 0; ``cfg_pp=True``: :func:`sample_gradient_estimation_cfg_pp` (a ComfyUI
    model, which reports its unconditional estimate; ValueError for another)."""
    if not isinstance(cfg_pp, bool):
        raise TypeError(f"cfg_pp: must be a bool, got {cfg_pp!r}")
    if cfg_pp:
        return sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args, callback, disable, ge_gamma)
    return _run(
        model,
        x,
        _Grid.of(sigmas),
        extra_args,
        callback,
        disable,
        "gradient_estimation",
        denoise_end=True,
        gamma=ge_gamma,
    )


def sample_er_sde(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None, noise_scaler: Callable[[Tensor], Tensor] | None = None,
    max_stage: int = 3,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_er_sde``: ER-SDE-Solver-``max_stage`` (fewstep's ``er_sde_1/2/3`` with the paper's
    ``d2_weight="reference"``) with the noise scale function ``noise_scaler`` (default ER SDE 5)."""
    stage = _integer("max_stage", max_stage, 1, 3)
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, f"er_sde_{stage}", noise_sampler=noise_sampler,
        noise_scale="er_sde_5" if noise_scaler is None else noise_scaler, s_noise=s_noise, d2_weight="reference",
        lower_order_final=False,
    )  # fmt: skip


def sample_seeds_2(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
    r: float = 0.5, solver_type: str = "phi_1",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_seeds_2``: SEEDS-2 with its stage at ``lambda_s + r h`` (``0 < r <= 1``) and the final
    update ``solver_type``: ``"phi_1"`` (DPM-Solver++(2S) weights) or ``"phi_2"`` (the data estimate linear in
    lambda through both stages)."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "seeds_2",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, r=r, solver_type=solver_type,
    )  # fmt: skip


def sample_exp_heun_2_x0(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, solver_type: str = "phi_2",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_exp_heun_2_x0``: the exponential Heun method on x0 in lambda (``sample_seeds_2`` with
    ``eta = 0``, ``r = 1``), ``x = denoised`` on the step to sigma = 0."""
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, "exp_heun_2_x0", solver_type=solver_type)


def sample_exp_heun_2_x0_sde(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, solver_type: str = "phi_2",
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_exp_heun_2_x0_sde``: ``sample_seeds_2`` with ``r = 1``. The step's end reuses the stage's
    normal, so one normal is drawn per step (ComfyUI draws a second one, which enters with weight 0)."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "exp_heun_2_x0_sde",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, solver_type=solver_type,
    )  # fmt: skip


def sample_seeds_3(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
    r_1: float = 1.0 / 3, r_2: float = 2.0 / 3,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_seeds_3``: SEEDS-3 with its stages at ``lambda_s + r_1 h`` and ``lambda_s + r_2 h``
    (``0 < r_1 < r_2 <= 1``; third order at ``r_2 = 2/3``, second order otherwise)."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "seeds_3",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, r_1=r_1, r_2=r_2,
    )  # fmt: skip


def sample_sa_solver(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = False, tau_func: Callable[[Tensor], float] | None = None,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, predictor_order: int = 3,
    corrector_order: int = 4, use_pece: bool = False, simple_order_2: bool = False,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_sa_solver``: SA-Solver's stochastic Adams predictor-corrector. ``tau_func(sigma_next)``
    gives tau on each step (None: tau = 1 on the steps starting in the middle [0.2, 0.8] of the grid's range);
    ``simple_order_2``: ``phi_2 -> 1/2`` in the order-2 weights; ``use_pece``: evaluate each corrected state again
    (one more evaluation per corrected step)."""
    if not isinstance(simple_order_2, bool):
        raise TypeError(f"simple_order_2: must be a bool, got {simple_order_2!r}")
    grid = _Grid.of(sigmas)
    tau: dict[str, Any] = {}
    if tau_func is not None:
        if not callable(tau_func):
            raise TypeError(f"tau_func: must be callable as tau_func(sigma), got {type(tau_func).__name__}")
        tau = {"tau": lambda level: tau_func(grid.sigmas[grid.index(level) + 1]), "tau_window": None}
    return _run(
        model, x, grid, extra_args, callback, disable, "sa_solver", noise_sampler=noise_sampler, s_noise=s_noise,
        predictor_order=predictor_order, corrector_order=corrector_order,
        second_order="reference" if simple_order_2 else "exact", use_pece=use_pece, **tau,
    )  # fmt: skip


def sample_sa_solver_pece(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = False, tau_func: Callable[[Tensor], float] | None = None,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, predictor_order: int = 3,
    corrector_order: int = 4, simple_order_2: bool = False,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_sa_solver_pece``: ``sample_sa_solver`` with ``use_pece=True``."""
    return sample_sa_solver(
        model, x, sigmas, extra_args, callback, disable, tau_func, s_noise, noise_sampler, predictor_order,
        corrector_order, True, simple_order_2,
    )  # fmt: skip


def sample_res_multistep_ancestral(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_res_multistep_ancestral``: the RES multistep step down to k-diffusion's ``sigma_down``, then
    ``sigma_up`` of fresh noise (``eta``, ``s_noise``); ``x = denoised`` on the step to sigma = 0."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "res_multistep_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
    )  # fmt: skip


def sample_lcm(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0, s_noise_end: float | None = None, noise_clip_std: float = 0.0,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_lcm``: ``x = denoised``, re-noised to the next level ``x + sigma_next s_i z`` (``s_i``:
    ``s_noise`` to ``s_noise_end`` linearly over the steps; ``noise_clip_std > 0`` clamps ``z`` to that many of its
    standard deviations); ``x = denoised`` on the step to sigma = 0."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "lcm", noise_sampler=noise_sampler,
        s_noise=s_noise, s_noise_end=s_noise_end, noise_clip_std=noise_clip_std,
    )  # fmt: skip


def sample_heunpp2(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_heunpp2``: Heun++ on all steps but the last two, a weighted Heun step, then Euler;
    ``s_churn > 0`` adds EDM's churn before each step (``HeunPP2Churn``)."""
    return _churned(model, x, sigmas, extra_args, callback, disable, "heunpp2", (s_churn, s_tmin, s_tmax, s_noise))
