"""The grid of noise levels, ComfyUI's seed and model sampling, the noise, the callback, and the run of a fewstep
solver with k-diffusion's sampler signature (:func:`make_sampler`, :func:`tuned_sampler`)."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor

from ...noise.levels import brownian_level_sampler
from ...options import real_option
from ...sampling import sample
from ...schedules import EDM, Flow, NoiseSchedule
from ...solvers import Solver
from ...tune.tuned import TunedSampler

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
        values = s.numpy()  # the checks on the host values: no tensor operations
        clean_end = bool(values[-1] == 0)
        checked = values[:-1] if clean_end else values
        if not (np.isfinite(checked).all() and (checked > 0).all()):
            raise ValueError("sigmas: only the last noise level may be 0, and all must be finite")
        return cls(sig, s[:-1] if clean_end else s, clean_end)

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
