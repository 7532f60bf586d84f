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
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
from torch import Tensor

from ..adaptive import AdaptiveStats, PIDController, sample_adaptive
from ..model import CallCount, Denoiser, Evaluation, Network, Point, Prediction
from ..model.stack import convert
from ..nodes import NodeTable
from ..noise.levels import brownian_level_sampler
from ..options import real_option
from ..predictions import conversion
from ..sampling import sample
from ..schedules import EDM, Flow, NoiseSchedule
from ..solvers import Solver, available
from ..solvers.base import cfg_pp_solvers
from ..solvers.frame import FrameMultistep, frame_orders
from ..solvers.ode.lms import LMS
from ..solvers.ode.pndm import IPNDM, IPNDMVariable
from ..solvers.sde.ancestral_dpm import DPM2Churn, DPMFastAncestral
from ..solvers.sde.edm_sde import EDMStochastic
from ..spacing import model_times
from ..tune.tuned import TunedSampler

KSampler = Callable[..., Tensor]
Model = Callable[..., Tensor]
KCallback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[Any, Any], Tensor]

# --- the grid, the seed, the noise and the callback ---------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """k-diffusion's ``sigmas``: the caller's tensor (the callback reports its entries) and, as float64 on the CPU,
    the noise levels of the model evaluations (without the trailing 0 of a clean end)."""

    sigmas: Tensor
    levels: Tensor
    clean_end: bool

    @classmethod
    def of(cls, sigmas: Tensor) -> _Grid:
        sig = torch.as_tensor(sigmas)
        s = sig.detach().to("cpu", torch.float64)
        if s.ndim != 1 or len(s) < 2:
            raise ValueError("sigmas: need a decreasing 1-D grid of at least two noise levels")
        clean_end = bool(s[-1] == 0)
        levels = s[:-1] if clean_end else s
        if not bool(torch.all((levels > 0) & torch.isfinite(levels))):
            raise ValueError("sigmas: only the last noise level may be 0, and all must be finite")
        return cls(sig, levels, clean_end)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def schedule(self, headroom: float = 1.0) -> EDM:
        """EDM over the grid's levels; ``headroom`` raises sigma_max (churn evaluates above the first level)."""
        lo, hi = float(self.levels.min()), float(self.levels.max()) * headroom
        return EDM(sigma_min=lo, sigma_max=hi if hi > lo else lo * (1 + 1e-12))

    def flow(self) -> Flow:
        """Flow over the grid's levels (a rectified-flow model's sigma is Flow's time t, ``alpha = 1 - sigma``)."""
        lo, hi = float(self.levels.min()), float(self.levels.max())
        if hi > 1.0:
            raise ValueError(f"sigmas: a rectified-flow model's noise levels lie in (0, 1], got sigma = {hi}")
        return Flow(t_min=lo, t_max=hi if hi > lo else min(lo * (1 + 1e-12), 1.0))

    def index(self, level: float) -> int:
        """The grid index of a noise level of the run."""
        return int(torch.argmin((self.levels - float(level)).abs()))


def model_sampling(model: Model) -> Any:
    """ComfyUI's ``model_sampling`` object behind a sampler's ``model`` argument (the attributes ComfyUI's own
    samplers read: ``model.inner_model.inner_model.model_sampling``, else
    ``model.inner_model.model_patcher.get_model_object("model_sampling")``), or None for a plain k-diffusion model."""
    inner = getattr(model, "inner_model", None)
    sampling = getattr(getattr(inner, "inner_model", None), "model_sampling", None)
    if sampling is None:
        patcher = getattr(inner, "model_patcher", None)
        get = getattr(patcher, "get_model_object", None)
        sampling = get("model_sampling") if callable(get) else None
    return sampling


def is_rectified_flow(sampling: Any) -> bool:
    """Whether a ComfyUI ``model_sampling`` is rectified flow: its class is, or derives from, ComfyUI's ``CONST``
    (SD3, Flux, ...: ``x = (1 - sigma) x0 + sigma eps``, sigma in [0, 1])."""
    return sampling is not None and any(cls.__name__ == "CONST" for cls in type(sampling).__mro__)


def _takes_seed(model: Model) -> bool:
    try:
        param = inspect.signature(model).parameters.get("seed")
    except (TypeError, ValueError):  # no introspectable signature
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _split_seed(model: Model, extra_args: dict[str, Any] | None) -> tuple[dict[str, Any], int | None]:
    """The model's keyword arguments and ComfyUI's noise seed ``extra_args["seed"]`` (kept for the model only when
    its signature names ``seed``, as ComfyUI's model wrapper does; a plain k-diffusion model would reject it)."""
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args: must be a dict of model keyword arguments, got {type(extra_args).__name__}")
    kwargs = dict(extra_args or {})
    seed = kwargs.get("seed")
    if "seed" in kwargs and not _takes_seed(model):
        del kwargs["seed"]
    if seed is None:
        return kwargs, None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"extra_args['seed']: must be an integer in [0, 2**64), got {seed!r}")
    return kwargs, int(seed)


def comfy_noise_sampler(x: Tensor, seed: int) -> NoiseSampler:
    """ComfyUI's default noise sampler for a seed: one generator on ``x``'s device seeded with ``seed`` (``seed + 1``
    on the CPU, where the start noise was drawn with ``manual_seed(seed)``), one standard normal like ``x`` per call
    (the noise levels are not used)."""
    gen = torch.Generator(x.device).manual_seed((seed + int(x.device.type == "cpu")) % 2**64)

    def noise(sigma: Any, sigma_next: Any) -> Tensor:
        return torch.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device, generator=gen)

    return noise


def _noise_options(
    kind: str, x: Tensor, seed: int | None, noise_sampler: NoiseSampler | None, schedule: NoiseSchedule
) -> dict[str, Any]:
    """fewstep.sample's noise option: the caller's noise sampler, else one from the seed by the reference's rule
    (``kind``: "comfy", "brownian", or "global" for torch's global generator whatever the seed)."""
    if noise_sampler is not None:
        if not callable(noise_sampler):
            raise TypeError(
                f"noise_sampler: must be callable as noise_sampler(sigma, sigma_next), got {noise_sampler!r}"
            )
        return {"noise_sampler": noise_sampler}
    if seed is None or kind == "global":
        return {}
    if kind == "brownian":
        return {"noise_sampler": brownian_level_sampler(schedule, x, seed)}
    return {"noise_sampler": comfy_noise_sampler(x, seed)}


class _Model:
    """``model(x, sigma, **kwargs)`` as fewstep calls it; with ``record``, the first input of each step is kept
    (k-diffusion's callback reports the state the step's data estimate was taken at)."""

    def __init__(self, model: Model, kwargs: dict[str, Any], record: bool):
        if not callable(model):
            raise TypeError(f"model: must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        self.model, self.kwargs, self.record = model, kwargs, record
        self.first: Tensor | None = None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.record and self.first is None:
            self.first = x.detach().clone()  # a solver may update its state in place after the evaluation
        return self.model(x, sigma, **self.kwargs)

    def take(self) -> Tensor | None:
        x, self.first = self.first, None
        return x


def _reporter(
    callback: KCallback, grid: _Grid, model: _Model, sigma_hat: Callable[[int], Tensor] | None
) -> Callable[[dict[str, Any]], None]:
    """fewstep's callback info as k-diffusion's ``{"x", "i", "sigma", "sigma_hat", "denoised"}``."""
    if not callable(callback):
        raise TypeError(f"callback: must be callable as callback(info), got {type(callback).__name__}")

    def report(info: dict[str, Any]) -> None:
        i, x = info["i"], model.take()
        sigma = grid.sigmas[i]
        hat = sigma if sigma_hat is None else sigma_hat(i)
        callback(
            {"x": info["x"] if x is None else x, "i": i, "sigma": sigma, "sigma_hat": hat, "denoised": info["denoised"]}
        )

    return report


def _run(
    model: Model,
    x: Tensor,
    grid: _Grid,
    extra_args: dict[str, Any] | None,
    callback: KCallback | None,
    disable: bool | None,
    solver: str | Solver,
    *,
    noise: str = "comfy",
    noise_sampler: NoiseSampler | None = None,
    headroom: float = 1.0,
    sigma_hat: Callable[[int], Tensor] | None = None,
    denoise_end: bool = False,
    **options: Any,
) -> Tensor:
    """fewstep's ``solver`` on the grid (EDM, the model predicting x0 from sigma; Flow for ComfyUI's rectified-flow
    models, whose ``noise_scale`` multiplies ``s_noise`` as in ComfyUI). ``denoise_end``: the step to sigma = 0
    returns the data estimate at the last level (``x = denoised``), as ComfyUI's multistep samplers do."""
    kwargs, seed = _split_seed(model, extra_args)
    calls = _Model(model, kwargs, record=callback is not None)
    report = None if callback is None else _reporter(callback, grid, calls, sigma_hat)
    sampling = model_sampling(model)
    schedule: NoiseSchedule
    if is_rectified_flow(sampling):
        schedule = grid.flow()
        if "s_noise" in options:
            noise_scale = float(getattr(sampling, "noise_scale", 1.0))  # ComfyUI's s_noise * noise_scale on flows
            options["s_noise"] = real_option("s_noise", options["s_noise"]) * noise_scale
    else:
        schedule = grid.schedule(headroom)
    last = denoise_end and grid.clean_end
    if not last or len(grid.levels) > 1:
        x = sample(
            calls, x, schedule, solver,
            spacing=grid.levels, prediction="sample", time_input="t" if isinstance(schedule, Flow) else "sigma",
            final="t_min" if last or not grid.clean_end else "zero",
            callback=report, progress=None if disable is None else not disable,
            **_noise_options(noise, x, seed, noise_sampler, schedule), **options,
        )  # fmt: skip
    return _denoised(calls, x, grid, report) if last else x


def _denoised(calls: _Model, x: Tensor, grid: _Grid, report: Callable[[dict[str, Any]], None] | None) -> Tensor:
    """The last step to sigma = 0 as ``x = D(x, sigma_{N-1})``, with its callback."""
    i = grid.steps - 1
    sigma = grid.sigmas[i].to(device=x.device, dtype=x.dtype) * x.new_ones([x.shape[0]])
    denoised = calls(x, sigma)
    if report is not None:
        report({"i": i, "x": x, "denoised": denoised})
    return denoised


Extra: TypeAlias = dict[str, Any] | None
Callback: TypeAlias = KCallback | None
Disable: TypeAlias = bool | None


def _signature_sampler(name: str, doc: str, run: Callable[..., Tensor], defaults: dict[str, Any]) -> KSampler:
    """A function ``name`` with k-diffusion's sampler signature that calls ``run(model, x, sigmas, extra_args,
    callback, disable, **options)`` with ``defaults`` under the caller's options."""

    def sampler(
        model: Model,
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: KCallback | None = None,
        disable: bool | None = None,
        **options: Any,
    ) -> Tensor:
        return run(model, x, sigmas, extra_args, callback, disable, **{**defaults, **options})

    sampler.__name__ = sampler.__qualname__ = name
    sampler.__doc__ = doc
    return sampler


def make_sampler(solver: str, **solver_defaults: Any) -> KSampler:
    """A k-diffusion-signature sampler that runs fewstep's ``solver`` (with its own options) on the given sigmas."""

    def run(
        model: Model, x: Tensor, sigmas: Tensor, extra: Extra, callback: Callback, disable: Disable, **opts: Any
    ) -> Tensor:
        noise = "global" if "generator" in opts or "seed" in opts else "comfy"
        return _run(model, x, _Grid.of(sigmas), extra, callback, disable, solver, noise=noise, **opts)

    doc = f"fewstep's {solver!r} solver with k-diffusion's sampler signature."
    return _signature_sampler(f"sample_{solver}", doc, run, solver_defaults)


def tuned_sampler(tuned: TunedSampler) -> KSampler:
    """A k-diffusion-signature sampler that runs the whole :class:`fewstep.tune.TunedSampler`: its solver, options
    (per-step choices included) and noise levels ``tuned.sigmas()``. ``sigmas`` may be left out; given, they must be
    the tuned ones (ValueError otherwise). For a k-diffusion sampler of your choice on the tuned levels, pass
    ``tuned.sigmas()`` to it instead."""
    if not isinstance(tuned, TunedSampler):
        raise TypeError(f"tuned: must be a fewstep.tune.TunedSampler, got {type(tuned).__name__}")
    levels = tuned.sigmas(warn=False)

    def sampler(
        model: Model,
        x: Tensor,
        sigmas: Tensor | None = None,
        extra_args: dict[str, Any] | None = None,
        callback: KCallback | None = None,
        disable: bool | None = None,
    ) -> Tensor:
        grid = levels.to(device=x.device, dtype=x.dtype if x.dtype.is_floating_point else torch.float64)
        if sigmas is not None:
            given = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
            if given.shape != levels.shape or not torch.allclose(given, levels, rtol=1e-5, atol=0.0):
                raise ValueError(
                    "sigmas: differ from the TunedSampler's levels (leave sigmas out, or pass tuned.sigmas())"
                )
        return _run(model, x, _Grid.of(grid), extra_args, callback, disable, tuned.solver, **tuned.solver_options)

    sampler.__name__ = sampler.__qualname__ = f"sample_tuned_{tuned.solver}"
    sampler.__doc__ = (
        f"fewstep's tuned {tuned.solver!r} sampler ({tuned.nfe} evaluations) with k-diffusion's signature."
    )
    return sampler


def _integer(name: str, value: object, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name}: must be in {low}..{high}, got {value!r}")
    return int(value)


def _unsupported(name: str, value: object, supported: object, why: str) -> None:
    """ValueError naming a reference option whose value fewstep cannot honour."""
    if value != supported:
        raise ValueError(f"{name}: {why} (got {value!r})")


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
    churned = {"heun": EDMStochastic, "euler": _EulerChurn, "dpm_solver_2": DPM2Churn}[method]
    solver = churned(s_churn, s_tmin, s_tmax, s_noise)

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
    noise (``dpm_2_ancestral``)."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpm_2_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
    )  # fmt: skip


def sample_dpmpp_2s_ancestral(
    model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
    callback: KCallback | None = None, disable: bool | None = None,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> Tensor:  # fmt: skip
    """k-diffusion's ``sample_dpmpp_2s_ancestral``: a DPM-Solver++(2S) step down to ``sigma_down``, then ``sigma_up``
    of noise (``dpmpp_2s_ancestral``)."""
    return _run(
        model, x, _Grid.of(sigmas), extra_args, callback, disable, "dpmpp_2s_ancestral",
        noise_sampler=noise_sampler, eta=eta, s_noise=s_noise,
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
    """ComfyUI's ``sample_heunpp2``: Heun++ on all steps but the last two, a weighted Heun step, then Euler.
    ``s_churn > 0`` (EDM's churn before each step) is not available: ValueError."""
    _unsupported("s_churn", real_option("s_churn", s_churn), 0.0, "fewstep's heunpp2 has no churn; use s_churn=0 "
                 "(or sample_heun for Heun with churn)")  # fmt: skip
    real_option("s_tmin", s_tmin), real_option("s_tmax", s_tmax, allow_inf=True), real_option("s_noise", s_noise)
    return _run(model, x, _Grid.of(sigmas), extra_args, callback, disable, "heunpp2")


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


class KDiffusionDenoiser(torch.nn.Module):
    """A fewstep :class:`Denoiser` seen as a k-diffusion denoiser ``D(x_hat, sigma_hat, **kwargs) -> x0``."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser: must be a fewstep.Denoiser, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        #: the network calls made through this wrapper
        self.calls = CallCount()
        sched = denoiser.schedule
        self.sigma_min = float(sched.sigma(sched.t_min) / sched.alpha(sched.t_min))
        self.sigma_max = float(sched.sigma(sched.t_max) / sched.alpha(sched.t_max))

    def get_sigmas(self, n: int, spacing: str = "karras") -> Tensor:
        """``n`` noise levels sigma/alpha from ``sigma_max`` to ``sigma_min`` by a fewstep spacing, then 0."""
        sched = self.denoiser.schedule
        t = model_times(sched, n, spacing)
        return torch.cat([torch.exp(-sched.lambda_(t)), torch.zeros(1, dtype=torch.float64)])

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        d = self.denoiser
        sched = d.schedule
        sigma = torch.as_tensor(sigma).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for level in torch.unique(sigma):
            rows = sigma == level
            t = sched.t_of_lambda(-torch.log(level.detach().double().cpu()))
            a, s = float(sched.alpha(t)), float(sched.sigma(t))
            aff = conversion(d.prediction, a, s, float(sched.dalpha(t)), float(sched.dsigma(t)))
            x_t = a * x[rows]
            time = torch.as_tensor(d.time_of(t), dtype=x.dtype, device=x.device).expand(x_t.shape[0])
            row_kwargs = {
                k: v[rows] if isinstance(v, Tensor) and v.shape[:1] == x.shape[:1] else v for k, v in kwargs.items()
            }
            raw = d.model(x_t.to(d.model_dtype or x.dtype), time, **{**d.model_kwargs, **row_kwargs}).to(x.dtype)
            self.calls.network += 1
            self.calls.branches += 1
            out[rows] = aff.x0_x * x_t + aff.x0_out * raw
        return out


def wrap(denoiser: Denoiser) -> KDiffusionDenoiser:
    """The k-diffusion view of a fewstep :class:`Denoiser` (see :class:`KDiffusionDenoiser`)."""
    return KDiffusionDenoiser(denoiser)
