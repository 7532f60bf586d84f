"""CFG++ (Chung et al. 2024): ComfyUI's ``*_cfg_pp`` samplers with their signatures, and every solver with a CFG++
form by its fewstep name (:func:`cfg_pp_sampler`)."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor

from ...model import Evaluation, Network, Point, Prediction
from ...model.stack import convert
from ...options import real_option
from .run import (
    Callback,
    Disable,
    Extra,
    KCallback,
    KSampler,
    Model,
    NoiseSampler,
    _Grid,
    _run,
    _signature_sampler,
)

# --- CFG++: ComfyUI's *_cfg_pp samplers ----------------------------------------------------------------------


class _ReportedUnconditional:
    """A CFG++ rule (:mod:`fewstep.guidance.cfg_pp`) for a ComfyUI model, which guides inside its call: the model's
    output is the guided clean sample ``D = D_u + cfg (D_c - D_u)`` (ComfyUI's ``cfg`` is CFG++'s lam), and ComfyUI's
    post-CFG hook (``model_options["sampler_post_cfg_function"]``, installed by :meth:`install`) reports the
    unconditional one ``D_u``, whose noise ``eps_hat = (x - alpha D_u) / sigma`` the solver renoises with."""

    cfg_pp: ClassVar[bool] = True

    def __init__(self) -> None:
        self.uncond: Tensor | None = None

    def hook(self, args: dict[str, Any]) -> Any:
        """ComfyUI's post-CFG function: keep ``uncond_denoised``, return the guided ``denoised`` unchanged."""
        self.uncond = args["uncond_denoised"]
        return args["denoised"]

    def install(self, model: Model, extra_args: dict[str, Any] | None) -> dict[str, Any]:
        """``extra_args`` with :meth:`hook` appended to a copy of its ``model_options`` and ComfyUI's cfg = 1 shortcut
        turned off (the unconditional branch must run), as ComfyUI's own ``*_cfg_pp`` samplers do; a ValueError
        before any model call when ``model`` takes no ``model_options``."""
        if not _takes(model, "model_options"):
            raise ValueError(_NO_UNCOND)
        args = dict(extra_args or {})
        options = dict(args.get("model_options") or {})
        options["sampler_post_cfg_function"] = [*options.get("sampler_post_cfg_function", []), self.hook]
        options["disable_cfg1_optimization"] = True
        args["model_options"] = options
        return args

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        def evaluate(x: Tensor, p: Point) -> Prediction:
            self.uncond = None
            out = network(x, p.model_time, p.t)
            if self.uncond is None:
                raise ValueError(_NO_UNCOND)
            x0, _ = convert(x, out, p, False)
            return x0, (convert(x, self.uncond.to(x.dtype), p, True)[1] if needs_eps else None)

        return evaluate


_NO_UNCOND = (
    "cfg_pp: CFG++ needs the unconditional data estimate, which ComfyUI's model reports to the post-CFG functions of "
    "extra_args['model_options'] (sampler_post_cfg_function); this model takes no model_options or never called "
    "them. Run inside ComfyUI, or use fewstep.sample(..., guidance=fewstep.guidance.CFGPlusPlus(...)) with a "
    "conditional model"
)


def _takes(model: Model, name: str) -> bool:
    """Whether ``model`` can be called with the keyword argument ``name`` (a parameter so named, or ``**kwargs``)."""
    try:
        params = inspect.signature(model).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature
        return False
    return any(
        p.kind == p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def _run_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None, callback: KCallback | None,
    disable: bool | None, solver: str, **options: Any,
) -> Tensor:  # fmt: skip
    """fewstep's ``solver`` in its CFG++ form on the grid, the unconditional estimate taken from ComfyUI's hook."""
    grid = _Grid.of(sigmas)
    rule = _ReportedUnconditional()
    return _run(model, x, grid, rule.install(model, extra_args), callback, disable, solver, guidance=rule, **options)


def sample_euler_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_euler_cfg_pp``: ``x = alpha_t D + sigma_t eps_u`` (DDIM's CFG++ step, Chung et al. 2024
    Alg. 1; fewstep's ``euler`` in its CFG++ form), with ComfyUI's ``cfg`` as CFG++'s lam."""
    return _run_cfg_pp(model, x, sigmas, extra_args, callback, disable, "euler")


def sample_euler_ancestral_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_euler_ancestral_cfg_pp``: ``x = alpha_t (D + sigma_down eps_u + s_noise sigma_up z)`` with
    k-diffusion's split of the levels ``sigma/alpha`` (fewstep's ``euler_ancestral``, ``downstep="scaled"`` on
    rectified-flow models too, as the reference)."""
    return _run_cfg_pp(
        model, x, sigmas, extra_args, callback, disable, "euler_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, downstep="scaled",
    )  # fmt: skip


def sample_dpmpp_2m_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_2m_cfg_pp``: ``x = alpha_t D + sigma_t eps_u + alpha_t (1 - e^{-h})/(2r) (D - D_u,prev)``,
    first order on the first step and to sigma = 0 (fewstep's ``dpmpp_2m``, ``lower_order_final=False``)."""
    return _run_cfg_pp(model, x, sigmas, extra_args, callback, disable, "dpmpp_2m", lower_order_final=False)


def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_dpmpp_2s_ancestral_cfg_pp``: DPM-Solver++(2S) on the unconditional estimates down to
    ``sigma_down``, ``sigma_up`` of noise, plus the guidance vector ``D - D_u`` (fewstep's ``dpmpp_2s_ancestral``;
    on rectified-flow models k-diffusion's split of ``sigma/alpha``, not ComfyUI's flow variant)."""
    return _run_cfg_pp(
        model, x, sigmas, extra_args, callback, disable, "dpmpp_2s_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
    )  # fmt: skip


def sample_res_multistep_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_res_multistep_cfg_pp``: DDIM's CFG++ step on the first step and to sigma = 0, else the RES
    step on the unconditional estimates from ``x + alpha (D - D_u)`` (eta = 0: ``s_noise`` and ``noise_sampler`` have
    no effect, as in the reference)."""
    real_option("s_noise", s_noise)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler: must be callable as noise_sampler(sigma, sigma_next), got {noise_sampler!r}")
    return _run_cfg_pp(model, x, sigmas, extra_args, callback, disable, "res_multistep", lower_order_final=False)


def sample_res_multistep_ancestral_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_res_multistep_ancestral_cfg_pp``: ``sample_res_multistep_cfg_pp``'s step down to k-diffusion's
    ``sigma_down``, then ``sigma_up`` of fresh noise (fewstep's ``res_multistep_ancestral``)."""
    return _run_cfg_pp(
        model, x, sigmas, extra_args, callback, disable, "res_multistep_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
    )  # fmt: skip


def sample_gradient_estimation_cfg_pp(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None, ge_gamma: float = 2.0,
) -> Tensor:  # fmt: skip
    """ComfyUI's ``sample_gradient_estimation_cfg_pp``: DDIM's CFG++ step plus ``(ge_gamma - 1) (d - d_prev) dt`` on
    the unconditional derivatives ``d = eps_u``, ``x = D`` on the step to sigma = 0."""
    return _run_cfg_pp(
        model, x, sigmas, extra_args, callback, disable, "gradient_estimation", denoise_end=True, gamma=ge_gamma
    )


def cfg_pp_sampler(solver: str, **solver_defaults: Any) -> KSampler:
    """A k-diffusion-signature sampler that runs fewstep's ``solver`` in its CFG++ form on a ComfyUI model (the
    unconditional estimate from ComfyUI's post-CFG hook, ComfyUI's ``cfg`` as lam), with the solver's own options."""

    def run(
        model: Model, x: Tensor, sigmas: Tensor, extra: Extra, callback: Callback, disable: Disable, **opts: Any
    ) -> Tensor:
        return _run_cfg_pp(model, x, sigmas, extra, callback, disable, solver, **opts)

    doc = f"fewstep's {solver!r} solver in its CFG++ form with k-diffusion's sampler signature."
    return _signature_sampler(f"sample_{solver}_cfg_pp", doc, run, solver_defaults)
