"""The golden cases: each key names one run through the public API; :func:`run_case` runs it (see record.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d

F64 = torch.float64
SCHEDULES = ("discrete_vp", "edm", "flow")
NFE_CANDIDATES = {"lo": (5, 6, 4, 7, 8), "hi": (10, 9, 11, 12, 13)}


def setting(sched: str) -> tuple[fewstep.NoiseSchedule, str, str, float]:
    """(schedule, prediction, spacing, noise scale) of a golden schedule name."""
    if sched == "discrete_vp":
        return fewstep.DiscreteVP.scaled_linear(), "epsilon", "logsnr", 1.0
    if sched == "edm":
        return fewstep.EDM(), "sample", "karras", 80.0
    return fewstep.Flow(), "velocity", "uniform", 1.0


def noise(n: int = 8, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def solver_run(name: str, sched: str, nfe: int, **kw: Any) -> Tensor:
    schedule, prediction, spacing, scale = setting(sched)
    model = mixture_2d().model(schedule, prediction)
    return fewstep.sample(
        model,
        noise() * scale,
        schedule,
        name,
        nfe=nfe,
        spacing=spacing,
        prediction=prediction,
        generator=generator(),
        **kw,
    )


def _solver_case(key: str) -> dict[str, Any]:
    _, name, sched, which = key.split("/")
    first: Exception | None = None
    for nfe in NFE_CANDIDATES[which]:
        try:
            return {"nfe": nfe, "x": solver_run(name, sched, nfe)}
        except ValueError as e:  # this NFE cannot be spent exactly: try the next
            if "nfe" not in str(e):
                raise
            first = first or e
    assert first is not None
    raise first


def _adaptive_case(key: str) -> dict[str, Any]:
    _, method, sched = key.split("/")
    schedule, prediction, _, scale = setting(sched)
    model = mixture_2d().model(schedule, prediction)
    stats = fewstep.adaptive.AdaptiveStats()
    x = fewstep.sample_adaptive(
        model, noise() * scale, schedule, method, rtol=1e-3, atol=1e-4, prediction=prediction, stats=stats,
        generator=generator() if method == "ggf_sde" else None,
    )  # fmt: skip
    return {"x": x, "nfe": stats.nfe, "times": torch.tensor(stats.times, dtype=F64)}


def _callback_case() -> dict[str, Any]:
    trace: list[Tensor] = []

    def callback(info: dict[str, Any]) -> None:
        trace.append(torch.tensor([float(info["i"]), float(info["t"])], dtype=F64))
        trace.append(info["x"].clone().reshape(-1))
        trace.append(info["denoised"].clone().reshape(-1))

    x = solver_run("dpmpp_2m", "discrete_vp", 8, callback=callback)
    return {"x": x, "trace": torch.cat(trace)}


def _guided_case(kind: str) -> dict[str, Any]:
    schedule, prediction, spacing, _ = setting("discrete_vp")
    base = mixture_2d().model(schedule, prediction)

    def cond_model(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return base(x, t) * (1 + 0.1 * c.reshape(-1, 1)) + 0.05 * c.reshape(-1, 1)

    n = noise().shape[0]
    kw: dict[str, Any] = {}
    if kind == "cfg":
        kw = dict(model_kwargs={"c": torch.ones(n, dtype=F64)}, uncond_kwargs={"c": torch.zeros(n, dtype=F64)})
        kw.update(guidance_scale=3.0, guidance_rescale=0.5)
        model = cond_model
    elif kind == "threshold":
        kw = dict(threshold=fewstep.Threshold(ratio=0.9, max_value=1.5))
        model = base
    else:  # time shift
        kw = dict(time_shift={"window": 0.5})
        model = base
    x = fewstep.sample(model, noise(), schedule, "dpmpp_3m", nfe=10, spacing=spacing, prediction=prediction, **kw)
    return {"x": x}


def _kdiffusion_case() -> dict[str, Any]:
    from fewstep.integrations import kdiffusion

    schedule = fewstep.EDM()
    model = mixture_2d().model(schedule, "sample")
    sigmas = torch.cat(
        [torch.exp(-schedule.lambda_(fewstep.spacing.model_times(schedule, 8, "karras"))), torch.zeros(1, dtype=F64)]
    )
    x = kdiffusion.sample_dpmpp_2m(lambda x_, s_: model(x_, s_), noise() * 80.0, sigmas)
    return {"x": x}


def _diffusers_case() -> dict[str, Any]:
    from fewstep.integrations.diffusers import FewstepScheduler

    scheduler = FewstepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver="dpmpp_3m")
    schedule = fewstep.DiscreteVP.scaled_linear()
    model = mixture_2d().model(schedule, "epsilon")
    scheduler.set_timesteps(10)
    x = noise() * float(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.to(F64).expand(x.shape[0])), t, x).prev_sample
    return {"x": x}


def _keys() -> list[str]:
    keys = [
        f"solver/{info.name}/{sched}/{which}"
        for info in fewstep.solvers.available()
        for sched in SCHEDULES
        for which in NFE_CANDIDATES
    ]
    keys += [f"adaptive/{m}/{s}" for m in ("dpm_solver_12", "dpm_solver_23", "dopri5", "ggf_sde") for s in SCHEDULES]
    keys += ["callback", "guided/cfg", "guided/threshold", "guided/time_shift", "kdiffusion", "diffusers"]
    return keys


CASES = _keys()


def run_case(key: str, nfe: int | None = None) -> dict[str, Any]:
    """The outputs of the case ``key`` (a solver case at the recorded ``nfe`` when given)."""
    if key.startswith("solver/"):
        if nfe is None:
            return _solver_case(key)
        _, name, sched, _ = key.split("/")
        return {"nfe": nfe, "x": solver_run(name, sched, nfe)}
    if key.startswith("adaptive/"):
        return _adaptive_case(key)
    if key.startswith("guided/"):
        return _guided_case(key.split("/")[1])
    return {"callback": _callback_case, "kdiffusion": _kdiffusion_case, "diffusers": _diffusers_case}[key]()
