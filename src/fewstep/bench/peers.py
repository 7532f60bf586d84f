"""Peer libraries side by side in ``fewstep compare``: diffusers' schedulers and k-diffusion's samplers on the
same target, schedule, start noise and NFE budget as fewstep's solvers.

Both libraries are optional and imported lazily (:func:`available_peers`).

- **diffusers** (DiscreteVP schedules only, ``--schedule sd`` / ``ddpm``): every scheduler of :data:`DIFFUSERS`
  is built from its default config with the schedule's betas (``beta_schedule``, ``beta_start``,
  ``beta_end``) and run as a pipeline runs it: ``for t in timesteps: out = model(scale_model_input(x, t), t);
  x = step(out, t, x).prev_sample``. All start from the same x_T (the start noise at ``t_max``): schedulers
  whose state is ``x / alpha`` (``init_noise_sigma != 1``: Euler, Heun, LMS) get ``x_T / alpha(t_max)``,
  which is the pipeline's ``z * init_noise_sigma`` for linspace / trailing spacing. Each scheduler is reported
  with its default ``timestep_spacing`` (``diffusers:DDIM``) and with the best of linspace / leading /
  trailing by mean log RMSE over the NFEs asked (``diffusers:DDIM[trailing]``).
- **k-diffusion** (every schedule): :data:`KDIFFUSION` samplers on
  :func:`fewstep.integrations.kdiffusion.wrap` of the same model, on Karras sigmas (their default), from
  ``x_T / alpha(t_max)``; their output is x0 directly. Not on schedules that start at alpha = 0 (flow from
  t = 1: infinite sigma/alpha).

Classifier-free guidance (``guidance=`` :class:`PeerGuidance`, ``fewstep compare --guidance``): as those libraries'
users apply it. diffusers' pipelines run the model once on the batch ``[x, x]`` with the unconditional and the
conditional labels and combine ``noise_pred = u + w (c - u)`` on the model output before ``scheduler.step``;
k-diffusion's samplers get a CFG denoiser that calls the wrapped denoiser once on ``[x, x]`` (with ``[sigma, sigma]``)
and combines ``u + w (c - u)`` on the denoised output. One batched call counts as one model call.

NFE: a peer is run with as many steps as spend at most the NFE asked (Heun and DPM-2: ``(NFE + 1) // 2``
steps, the last an Euler step); the NFE column is the count of model calls actually made. A peer that
raises or returns inf / NaN is flagged (``nonfinite``), never fatal.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model import Denoiser
from ..schedules import DiscreteVP, NoiseSchedule
from .targets.conditional import cfg_combine

__all__ = [
    "DIFFUSERS",
    "KDIFFUSION",
    "KDIFFUSION_ODE",
    "PeerGuidance",
    "PeerRun",
    "available_peers",
    "diffusers_grid",
    "diffusers_runs",
    "kdiffusion_grid",
    "kdiffusion_runs",
]

SPACINGS = ("linspace", "leading", "trailing")
#: diffusers' noise-level grids other than its ``timestep_spacing``: the config flag that selects each, on the
#: schedulers that take it (``use_karras_sigmas``, ...; ``lu_lambdas``: DPM-Solver's uniform-lambda grid).
SIGMA_GRIDS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
    "lu_lambdas": "use_lu_lambdas",
}


@dataclass(frozen=True)
class DiffusersPeer:
    label: str
    cls: str
    options: tuple[tuple[str, Any], ...] = ()
    two_evals_per_step: bool = False  # Heun: 2 n - 1 calls for n steps


#: diffusers schedulers (class name, extra config), by label.
DIFFUSERS: tuple[DiffusersPeer, ...] = (
    DiffusersPeer("DDIM", "DDIMScheduler", (("clip_sample", False), ("set_alpha_to_one", True))),
    DiffusersPeer("DPMSolverMultistep(2)", "DPMSolverMultistepScheduler", (("solver_order", 2),)),
    DiffusersPeer("DPMSolverMultistep(3)", "DPMSolverMultistepScheduler", (("solver_order", 3),)),
    DiffusersPeer("UniPCMultistep(bh2)", "UniPCMultistepScheduler", (("solver_type", "bh2"),)),
    DiffusersPeer("DEISMultistep", "DEISMultistepScheduler"),
    DiffusersPeer("EulerDiscrete", "EulerDiscreteScheduler"),
    DiffusersPeer("HeunDiscrete", "HeunDiscreteScheduler", two_evals_per_step=True),
    DiffusersPeer("LMSDiscrete", "LMSDiscreteScheduler"),
)

#: A k-diffusion sampler: (name, evaluations per step but the last[, keyword options]).
KSampler = tuple[str, int] | tuple[str, int, Mapping[str, Any]]

#: k-diffusion samplers: (name, evaluations per step but the last).
KDIFFUSION: tuple[KSampler, ...] = (
    ("sample_euler", 1),
    ("sample_heun", 2),
    ("sample_dpmpp_2m", 1),
    ("sample_lms", 1),
    ("sample_dpm_2", 2),
)
#: Every deterministic k-diffusion sampler on a sigma grid: :data:`KDIFFUSION` and the ancestral / SDE samplers
#: whose ``eta=0`` is a probability-flow ODE solver (DPM-Solver++(2S), DPM-Solver++(3M)).
KDIFFUSION_ODE: tuple[KSampler, ...] = (
    *KDIFFUSION,
    ("sample_dpmpp_2s_ancestral", 2, {"eta": 0.0}),
    ("sample_dpmpp_3m_sde", 1, {"eta": 0.0}),
)

#: fewstep's DiscreteVP constructors as diffusers beta configs.
BETA_CONFIGS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


def available_peers() -> tuple[str, ...]:
    """The peer libraries importable here: a subset of ("diffusers", "k-diffusion")."""
    out = []
    if importlib.util.find_spec("diffusers") is not None:
        out.append("diffusers")
    if importlib.util.find_spec("k_diffusion") is not None:
        out.append("k-diffusion")
    return tuple(out)


@dataclass
class PeerRun:
    """One peer configuration at one NFE: its samples (None when it raised) and the model calls it made."""

    library: str
    label: str
    nfe_asked: int
    nfe: int | None
    x: Tensor | None
    error: str | None = None

    @property
    def nonfinite(self) -> bool:
        return self.x is None or not bool(torch.all(torch.isfinite(self.x)))


@dataclass(frozen=True)
class PeerGuidance:
    """Classifier-free guidance (Ho & Salimans 2022) at ``scale`` with the labels ``y`` and the unconditional labels
    ``null`` (one per sample), passed to the model as the keyword ``key``: ``u + w (c - u)`` on the output."""

    y: Tensor
    null: Tensor
    scale: float
    key: str = "y"

    def _both(self) -> dict[str, Tensor]:
        return {self.key: torch.cat([self.null, self.y])}

    def pipeline_model(self, model: Callable[..., Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """A diffusers pipeline's guided model output: ``model([x, x], t, y=[null, y])``, then ``u + w (c - u)``."""
        both, scale = self._both(), self.scale

        def guided(x: Tensor, t: Tensor) -> Tensor:
            u, c = model(torch.cat([x, x]), t, **both).chunk(2)
            return cfg_combine(u, c, scale)

        return guided

    def kdiffusion_denoiser(self, denoiser: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """k-diffusion's CFG denoiser: ``denoiser([x, x], [sigma, sigma], y=[null, y])``, then ``u + w (c - u)``."""
        both, scale = self._both(), self.scale

        def guided(x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
            s = torch.as_tensor(sigma).reshape(-1).expand(x.shape[0])
            u, c = denoiser(torch.cat([x, x]), torch.cat([s, s]), **kwargs, **both).chunk(2)
            return cfg_combine(u, c, scale)

        return guided


class _Counted:
    def __init__(self, fn: Callable[..., Tensor]):
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def _rmse(x: Tensor | None, reference: Tensor) -> float:
    if x is None or not bool(torch.all(torch.isfinite(x))):
        return math.nan
    return float(torch.sqrt(torch.mean((x.to(reference.dtype) - reference) ** 2)))


def beta_config(schedule: NoiseSchedule) -> dict[str, Any] | None:
    """The diffusers beta config of a DiscreteVP schedule built by ``DiscreteVP.linear`` / ``scaled_linear``."""
    if not isinstance(schedule, DiscreteVP):
        return None
    ac = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64)
    for name, ctor in (("linear", DiscreteVP.linear), ("scaled_linear", DiscreteVP.scaled_linear)):
        ref = torch.as_tensor(ctor().alphas_cumprod, dtype=torch.float64)
        if ref.shape == ac.shape and bool(torch.allclose(ref, ac, rtol=1e-6, atol=0)):
            return {**BETA_CONFIGS[name], "num_train_timesteps": int(ac.shape[0])}
    return None


def run_scheduler(scheduler: Any, model: Callable[..., Tensor], x_t: Tensor, alpha_max: float) -> Tensor:
    """A diffusers scheduler run as a pipeline runs it, from the state ``x_t`` at the schedule's ``t_max``."""
    x = x_t / alpha_max if float(scheduler.init_noise_sigma) != 1.0 else x_t
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        out = model(inp, torch.as_tensor(t).to(torch.float64))
        x = scheduler.step(out, t, x).prev_sample
    return x


def make_scheduler(peer: DiffusersPeer, betas: dict[str, Any], prediction: str, spacing: str | None) -> Any:
    """The scheduler of ``peer`` on a ``timestep_spacing`` (None: its default) or a grid of :data:`SIGMA_GRIDS`."""
    import diffusers

    cls = getattr(diffusers, peer.cls)
    kwargs = {**betas, **dict(peer.options), "prediction_type": _diffusers_prediction(prediction)}
    if spacing in SIGMA_GRIDS:
        kwargs[SIGMA_GRIDS[spacing]] = True
    elif spacing is not None:
        kwargs["timestep_spacing"] = spacing
    return cls(**kwargs)


def takes_spacing(peer: DiffusersPeer, spacing: str | None) -> bool:
    """Whether the scheduler of ``peer`` has the option that selects ``spacing`` (every one has the timestep ones)."""
    if spacing not in SIGMA_GRIDS:
        return True
    import diffusers

    return SIGMA_GRIDS[spacing] in inspect.signature(getattr(diffusers, peer.cls).__init__).parameters


def _diffusers_prediction(prediction: str) -> str:
    """fewstep's prediction name in diffusers (the ones both have: epsilon, sample, v_prediction)."""
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"diffusers schedulers do not take {prediction!r} predictions")
    return prediction


def _steps(nfe: int, two: bool) -> int:
    return (nfe + 1) // 2 if two else nfe


def diffusers_grid(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    nfes: Sequence[int],
    prediction: str,
    peers: Sequence[DiffusersPeer] | None = None,
    spacings: Sequence[str | None] = (None, *SPACINGS),
    guidance: PeerGuidance | None = None,
) -> dict[tuple[str, str | None], list[PeerRun]]:
    """Every diffusers scheduler on every spacing it takes (a ``timestep_spacing``, None: its default, or a grid of
    :data:`SIGMA_GRIDS`) at every NFE, by (label, spacing); empty where diffusers cannot run (not a DiscreteVP schedule
    of its beta configs, or another prediction)."""
    betas = beta_config(schedule)
    if betas is None or prediction not in ("epsilon", "sample", "v_prediction"):
        return {}
    alpha_max = float(schedule.alpha(schedule.t_max))
    net = model if guidance is None else guidance.pipeline_model(model)
    out: dict[tuple[str, str | None], list[PeerRun]] = {}
    for peer in DIFFUSERS if peers is None else peers:
        for spacing in (sp for sp in spacings if takes_spacing(peer, sp)):
            runs = []
            for asked in nfes:
                counted = _Counted(net)
                try:
                    s = make_scheduler(peer, betas, prediction, spacing)
                    s.set_timesteps(_steps(asked, peer.two_evals_per_step))
                    x: Tensor | None = run_scheduler(s, counted, noise, alpha_max)
                    err = None
                except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                    x, err = None, f"{type(e).__name__}: {e}"
                runs.append(PeerRun("diffusers", peer.label, asked, counted.calls or None, x, err))
            out[peer.label, spacing] = runs
    return out


def _mean_log_rmse(runs: Sequence[PeerRun], reference: Tensor) -> float:
    vals = [_rmse(r.x, reference) for r in runs]
    return math.inf if any(not v > 0 for v in vals) else sum(math.log(v) for v in vals) / len(vals)


def diffusers_runs(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    reference: Tensor,
    nfes: Sequence[int],
    prediction: str,
    peers: Sequence[DiffusersPeer] | None = None,
    guidance: PeerGuidance | None = None,
) -> list[PeerRun]:
    """Every diffusers scheduler at every NFE: default spacing, and the best spacing by mean log RMSE."""
    grid = diffusers_grid(model, schedule, noise, nfes, prediction, peers, guidance=guidance)
    out: list[PeerRun] = []
    for label in dict.fromkeys(label for label, _ in grid):
        out.extend(grid[label, None])
        best = min(SPACINGS, key=lambda sp: _mean_log_rmse(grid[label, sp], reference))
        for r in grid[label, best]:
            r.label = f"{label}[{best}]"
            out.append(r)
    return out


KDIFFUSION_SPACINGS = ("karras", "exponential")  # k-diffusion's own sigma grids (get_sigmas_karras / _exponential)


def _ksampler(entry: KSampler) -> tuple[str, int, dict[str, Any]]:
    name, per_step, *rest = entry
    return name, per_step, dict(rest[0]) if rest else {}


def ksampler_label(entry: KSampler) -> str:
    """A k-diffusion sampler's row name: its function, with its options (``sample_dpmpp_3m_sde(eta=0.0)``)."""
    name, _, options = _ksampler(entry)
    return name + (f"({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def kdiffusion_grid(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    nfes: Sequence[int],
    prediction: str,
    samplers: Sequence[KSampler] | None = None,
    spacings: Sequence[str] = KDIFFUSION_SPACINGS,
    guidance: PeerGuidance | None = None,
) -> dict[tuple[str, str], list[PeerRun]]:
    """Every k-diffusion sampler on every sigma grid (a fewstep spacing of sigma/alpha: karras, exponential,
    polyexponential, ...) at every NFE from ``x_T / alpha(t_max)``, by (label, spacing); empty where k-diffusion cannot
    start (alpha(t_max) = 0)."""
    from k_diffusion import sampling

    from ..integrations.kdiffusion import wrap

    alpha_max = float(schedule.alpha(schedule.t_max))
    out: dict[tuple[str, str], list[PeerRun]] = {}
    if alpha_max == 0.0:  # starts at infinite sigma/alpha (flow from t = 1): no k-diffusion start state
        return out
    for entry in KDIFFUSION if samplers is None else samplers:
        name, per_step, options = _ksampler(entry)
        label = ksampler_label(entry)
        for spacing in spacings:
            runs = []
            for asked in nfes:
                kd = wrap(Denoiser(model, schedule, prediction))
                den = kd if guidance is None else guidance.kdiffusion_denoiser(kd)
                x: Tensor | None
                try:
                    sigmas = kd.get_sigmas(_steps(asked, per_step == 2), spacing)
                    fn = getattr(sampling, name)
                    with torch.no_grad():
                        x = fn(den, noise / alpha_max, sigmas, disable=True, **options)
                    err = None
                except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                    x, err = None, f"{type(e).__name__}: {e}"
                runs.append(PeerRun("k-diffusion", label, asked, kd.calls.nfe or None, x, err))
            out[label, spacing] = runs
    return out


def kdiffusion_runs(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    nfes: Sequence[int],
    prediction: str,
    samplers: Sequence[KSampler] | None = None,
    reference: Tensor | None = None,
    guidance: PeerGuidance | None = None,
) -> list[PeerRun]:
    """Every k-diffusion sampler at every NFE from ``x_T / alpha(t_max)``: on its default Karras sigmas and, given
    the ``reference``, again on the best of its Karras / exponential grids by mean log RMSE."""
    spacings = KDIFFUSION_SPACINGS if reference is not None else KDIFFUSION_SPACINGS[:1]
    grid = kdiffusion_grid(model, schedule, noise, nfes, prediction, samplers, spacings, guidance)
    out: list[PeerRun] = []
    for label in dict.fromkeys(label for label, _ in grid):
        out.extend(grid[label, "karras"])
        if reference is not None:
            best = min(spacings, key=lambda sp: _mean_log_rmse(grid[label, sp], reference))
            for r in grid[label, best]:
                out.append(PeerRun(r.library, f"{label}[{best}]", r.nfe_asked, r.nfe, r.x, r.error))
    return out
