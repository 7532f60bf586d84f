"""k-diffusion / ComfyUI: fewstep solvers with k-diffusion's sampler signature, and the reverse direction.

k-diffusion samplers are called as ``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)``
where ``model(x, sigma, **extra_args)`` returns the denoised ``x0`` for ``x = x0 + sigma eps`` and ``sigmas``
is a decreasing grid, usually ending in 0. That is fewstep's :class:`~fewstep.EDM` schedule (alpha = 1,
sigma = t) with a ``"sample"``-predicting model taking sigma, so every fewstep solver runs on it unchanged::

    from fewstep.integrations import kdiffusion
    samples = kdiffusion.sample_dpmpp_3m(model, x, sigmas)        # any fewstep solver: sample_<name>

Two sets of functions:

- :data:`KSAMPLERS`: every k-diffusion / ComfyUI sampler name with a fewstep counterpart (``sample_euler``,
  ``sample_dpmpp_3m_sde``, ``sample_sa_solver``, ...), with exactly the reference's keyword options and their
  meaning, agreeing with the reference on identical inputs. An option fewstep cannot honour is a ``ValueError``
  that names it (docs/integrations.md lists the options and the documented deviations). Where the reference's
  update differs from fewstep's default solver, the function selects the reference's variant: ``dpmpp_3m_sde``
  weights the second difference by ``H phi_3(-H)`` (``d2_weight="reference"``, where fewstep's default is the
  Taylor-exact ``2 H phi_3(-H)``) and keeps the third order to the end (``lower_order_final=False``).
- :data:`SAMPLERS`: every fewstep solver by its fewstep name, ``sample_<name>(..., **options)`` with the
  solver's own options (the reference-named ones are the functions of :data:`KSAMPLERS`).
- CFG++ (Chung et al. 2024; :mod:`fewstep.guidance.cfg_pp`): ComfyUI's ``*_cfg_pp`` samplers with their signatures
  (:data:`CFG_PP_KSAMPLERS`: ``sample_euler_cfg_pp``, ``sample_dpmpp_2m_cfg_pp``, ...; and
  ``sample_gradient_estimation(cfg_pp=True)``), and every solver with a CFG++ form by its fewstep name
  (:data:`CFG_PP_SAMPLERS`). They take ComfyUI's guided model, whose call returns the guided data estimate at
  ComfyUI's ``cfg`` (CFG++'s lam), and get the unconditional one as ComfyUI's own ``*_cfg_pp`` samplers do: a
  post-CFG function appended to a copy of ``extra_args["model_options"]`` (``sampler_post_cfg_function``, with
  ``disable_cfg1_optimization``) receives ``uncond_denoised``. A model that takes no ``model_options`` is a
  ValueError naming ``cfg_pp``.

``extra_args["seed"]`` (ComfyUI's noise seed) seeds the step noise as ComfyUI does when no ``noise_sampler`` is
given: one ``torch.Generator`` on ``x``'s device seeded with ``seed`` (``seed + 1`` on the CPU), one normal like
``x`` per draw; the Brownian samplers (``dpmpp_2m_sde``, ``dpmpp_3m_sde``) use fewstep's Brownian path seeded
``seed, seed + 1, ...`` per sample; Euler and Heun churn draw from torch's global generator, as their reference
does. The seed reaches the model only when its signature names a ``seed`` parameter (ComfyUI's model wrapper).
The callback gets k-diffusion's keys: ``x`` (the state the step's data estimate was taken at), ``i``, ``sigma``
and ``sigma_hat`` (0-dim tensors of ``sigmas``' dtype and device) and ``denoised``.

ComfyUI's rectified-flow models (SD3, Flux, ...: a ``model_sampling`` of ComfyUI's ``CONST`` type, found where
ComfyUI's samplers look for it, see :func:`model_sampling`) have ``x = (1 - sigma) x0 + sigma eps`` with sigma in
(0, 1]: on them every function integrates on fewstep's :class:`~fewstep.Flow` schedule (time t = sigma), so the
lambda-based and stochastic samplers use the flow's ``lambda = log((1 - sigma) / sigma)`` and marginals, as ComfyUI's
half-log-SNR samplers do; ``sample_euler_ancestral`` takes ComfyUI's flow rule, ``s_noise`` is multiplied by the
model sampling's ``noise_scale``, and EDM's churn (``s_churn > 0``) is a ValueError.

:func:`wrap` goes the other way: it turns a fewstep :class:`~fewstep.Denoiser` (any schedule and prediction)
into a k-diffusion denoiser ``D(x_hat, sigma_hat)`` on the scaled state ``x_hat = x / alpha`` with
``sigma_hat = sigma / alpha``, so k-diffusion's own samplers can run on it.

Modules: ``run`` (the grid, seed, noise, callback and the run of a solver), ``samplers`` (the reference-named
functions), ``cfg_pp`` (ComfyUI's CFG++ samplers), ``denoiser`` (:func:`wrap`); the registries are defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...solvers import available
from ...solvers.base import cfg_pp_solvers
from .cfg_pp import (  # noqa: F401 - the reference-named functions
    cfg_pp_sampler,
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
    sample_gradient_estimation_cfg_pp,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from .denoiser import KDiffusionDenoiser, wrap  # noqa: F401 - public
from .run import (  # noqa: F401 - public
    KSampler,
    comfy_noise_sampler,
    is_rectified_flow,
    make_sampler,
    model_sampling,
    tuned_sampler,
)
from .samplers import (  # noqa: F401 - the reference-named functions
    sample_ddpm,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpm_adaptive,
    sample_dpm_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_gpu,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2m_sde_heun_gpu,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_3m_sde_gpu,
    sample_dpmpp_sde,
    sample_er_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_exp_heun_2_x0,
    sample_exp_heun_2_x0_sde,
    sample_gradient_estimation,
    sample_heun,
    sample_heunpp2,
    sample_ipndm,
    sample_ipndm_v,
    sample_lcm,
    sample_lms,
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_sa_solver,
    sample_sa_solver_pece,
    sample_seeds_2,
    sample_seeds_3,
)

#: Every k-diffusion / ComfyUI sampler name with a fewstep counterpart, as a function with the reference's signature.
KSAMPLERS: dict[str, Callable[..., Any]] = {
    f.__name__[len("sample_") :]: f
    for f in (
        sample_euler, sample_euler_ancestral, sample_heun, sample_lms, sample_dpm_adaptive, sample_dpmpp_2m,
        sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_2m_sde_gpu, sample_dpmpp_2m_sde_heun_gpu,
        sample_dpmpp_3m_sde, sample_dpmpp_3m_sde_gpu, sample_ddpm, sample_ipndm, sample_ipndm_v, sample_res_multistep,
        sample_gradient_estimation, sample_er_sde, sample_seeds_2, sample_seeds_3, sample_sa_solver,
        sample_dpm_2, sample_dpm_2_ancestral, sample_dpm_fast, sample_dpmpp_2s_ancestral, sample_dpmpp_sde,
        sample_heunpp2, sample_exp_heun_2_x0, sample_exp_heun_2_x0_sde, sample_lcm, sample_res_multistep_ancestral,
        sample_sa_solver_pece,
    )
}  # fmt: skip

#: Every fewstep solver as a k-diffusion sampler, by fewstep name: the reference's function where k-diffusion or
#: ComfyUI has the name (:data:`KSAMPLERS`), else ``sample_<name>(..., **options)`` with the solver's options.
#: Stochastic ones take ``noise_sampler=`` (k-diffusion's convention), ``generator=`` or ``extra_args["seed"]``;
#: with none of them they draw from torch's global generator.
SAMPLERS: dict[str, KSampler] = {info.name: KSAMPLERS.get(info.name) or make_sampler(info.name) for info in available()}


#: ComfyUI's CFG++ samplers by their ComfyUI names (``euler_cfg_pp``, ...), with ComfyUI's signatures.
CFG_PP_KSAMPLERS: dict[str, KSampler] = {
    f.__name__[len("sample_") :]: f
    for f in (
        sample_euler_cfg_pp, sample_euler_ancestral_cfg_pp, sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral_cfg_pp,
        sample_res_multistep_cfg_pp, sample_res_multistep_ancestral_cfg_pp, sample_gradient_estimation_cfg_pp,
    )
}  # fmt: skip

#: Every fewstep solver with a CFG++ form as a k-diffusion sampler on ComfyUI models, by fewstep name: ComfyUI's
#: ``*_cfg_pp`` function where ComfyUI has one (:data:`CFG_PP_KSAMPLERS`), else :func:`cfg_pp_sampler`.
CFG_PP_SAMPLERS: dict[str, KSampler] = {
    name: CFG_PP_KSAMPLERS.get(f"{name}_cfg_pp") or cfg_pp_sampler(name) for name in cfg_pp_solvers()
}


def __getattr__(name: str) -> KSampler:  # sample_<solver>
    if name.startswith("sample_") and name[len("sample_") :] in SAMPLERS:
        return SAMPLERS[name[len("sample_") :]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
