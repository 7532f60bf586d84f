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

NFE: a peer is run with as many steps as spend at most the NFE asked (Heun and DPM-2: ``(NFE + 1) // 2``
steps, the last an Euler step); the NFE column is the count of model calls actually made. A peer that
raises or returns inf / NaN is flagged (``nonfinite``), never fatal.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..model import Denoiser
from ..schedules import DiscreteVP, NoiseSchedule

__all__ = ["DIFFUSERS", "KDIFFUSION", "PeerRun", "available_peers", "diffusers_runs", "kdiffusion_runs"]

SPACINGS = ("linspace", "leading", "trailing")


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

#: k-diffusion samplers: (name, evaluations per step but the last).
KDIFFUSION: tuple[tuple[str, int], ...] = (
    ("sample_euler", 1),
    ("sample_heun", 2),
    ("sample_dpmpp_2m", 1),
    ("sample_lms", 1),
    ("sample_dpm_2", 2),
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
    import diffusers

    cls = getattr(diffusers, peer.cls)
    kwargs = {**betas, **dict(peer.options), "prediction_type": _diffusers_prediction(prediction)}
    if spacing is not None:
        kwargs["timestep_spacing"] = spacing
    return cls(**kwargs)


def _diffusers_prediction(prediction: str) -> str:
    """fewstep's prediction name in diffusers (the ones both have: epsilon, sample, v_prediction)."""
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"diffusers schedulers do not take {prediction!r} predictions")
    return prediction


def _steps(nfe: int, two: bool) -> int:
    return (nfe + 1) // 2 if two else nfe


def diffusers_runs(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    reference: Tensor,
    nfes: Sequence[int],
    prediction: str,
    peers: Sequence[DiffusersPeer] | None = None,
) -> list[PeerRun]:
    """Every diffusers scheduler at every NFE: default spacing, and the best spacing by mean log RMSE."""
    betas = beta_config(schedule)
    if betas is None or prediction not in ("epsilon", "sample", "v_prediction"):
        return []
    alpha_max = float(schedule.alpha(schedule.t_max))
    out: list[PeerRun] = []
    for peer in DIFFUSERS if peers is None else peers:
        by_spacing: dict[str | None, list[PeerRun]] = {}
        for spacing in (None, *SPACINGS):
            runs = []
            for asked in nfes:
                counted = _Counted(model)
                try:
                    s = make_scheduler(peer, betas, prediction, spacing)
                    s.set_timesteps(_steps(asked, peer.two_evals_per_step))
                    x: Tensor | None = run_scheduler(s, counted, noise, alpha_max)
                    err = None
                except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                    x, err = None, f"{type(e).__name__}: {e}"
                runs.append(PeerRun("diffusers", peer.label, asked, counted.calls or None, x, err))
            by_spacing[spacing] = runs
        default = by_spacing[None]
        out.extend(default)

        scores = {}
        for sp in SPACINGS:
            vals = [_rmse(r.x, reference) for r in by_spacing[sp]]
            scores[sp] = math.inf if any(not v > 0 for v in vals) else sum(math.log(v) for v in vals) / len(vals)
        best = min(SPACINGS, key=scores.__getitem__)
        for r in by_spacing[best]:
            r.label = f"{peer.label}[{best}]"
            out.append(r)
    return out


KDIFFUSION_SPACINGS = ("karras", "exponential")  # k-diffusion's own sigma grids (get_sigmas_karras / _exponential)


def kdiffusion_runs(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    noise: Tensor,
    nfes: Sequence[int],
    prediction: str,
    samplers: Sequence[tuple[str, int]] | None = None,
    reference: Tensor | None = None,
) -> list[PeerRun]:
    """Every k-diffusion sampler at every NFE from ``x_T / alpha(t_max)``: on its default Karras sigmas and, given
    the ``reference``, again on the best of its Karras / exponential grids by mean log RMSE."""
    from k_diffusion import sampling

    from ..integrations.kdiffusion import wrap

    alpha_max = float(schedule.alpha(schedule.t_max))
    out: list[PeerRun] = []
    if alpha_max == 0.0:  # starts at infinite sigma/alpha (flow from t = 1): no k-diffusion start state
        return out
    for name, per_step in KDIFFUSION if samplers is None else samplers:
        by_spacing: dict[str, list[PeerRun]] = {}
        for spacing in KDIFFUSION_SPACINGS if reference is not None else KDIFFUSION_SPACINGS[:1]:
            runs = []
            for asked in nfes:
                den = Denoiser(model, schedule, prediction)
                kd = wrap(den)
                x: Tensor | None
                try:
                    sigmas = kd.get_sigmas(_steps(asked, per_step == 2), spacing)
                    fn = getattr(sampling, name)
                    with torch.no_grad():
                        x = fn(kd, noise / alpha_max, sigmas, disable=True)
                    err = None
                except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                    x, err = None, f"{type(e).__name__}: {e}"
                runs.append(PeerRun("k-diffusion", name, asked, kd.calls.nfe or None, x, err))
            by_spacing[spacing] = runs
        out.extend(by_spacing["karras"])
        if reference is not None:
            scores = {}
            for sp, runs in by_spacing.items():
                vals = [_rmse(r.x, reference) for r in runs]
                scores[sp] = math.inf if any(not v > 0 for v in vals) else sum(math.log(v) for v in vals) / len(vals)
            best = min(by_spacing, key=scores.__getitem__)
            for r in by_spacing[best]:
                out.append(PeerRun(r.library, f"{name}[{best}]", r.nfe_asked, r.nfe, r.x, r.error))
    return out
