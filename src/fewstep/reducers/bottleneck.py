"""Bottleneck sampling: some steps at a lower resolution, where each network call is cheaper, the last at full.

Tian et al. 2025, "Training-free Diffusion Acceleration with Bottleneck Sampling": models pre-trained at lower
resolutions carry a low-resolution prior, so a run can follow a high-low-high workflow, full resolution for the
first steps (the layout), a lower one for the middle steps, full resolution again for the last (the detail),
re-injecting noise at each change of resolution and shifting each stage's times.

A run is a list of :class:`Stage` ``(factor, nfe, t_end, t_start)``. Stage ``i`` runs the solver with ``nfe``
requests on the schedule restricted to ``[t_end_i, t_start_i]``, on images of ``1/factor_i`` of the height and width,
and ends with the solver's step to sigma = 0, an estimate ``x0_i`` of the clean image at its resolution (for a
first-order last step, the model's prediction at ``t_end_i``). At the change of stage ``x0_i`` is resized to the
next resolution (``R``: the block mean when shrinking, interpolation when enlarging) and re-noised to the next
stage's start time,

    x_{t_start_{i+1}} = alpha(t_start_{i+1}) R(x0_i) + sigma(t_start_{i+1}) eps,

with ``eps`` fresh standard normal noise (``noise="fresh"``, as the paper; ``noise="start"`` uses the run's start
noise ``z`` at that resolution, ``k P_k z``, which keeps the law exactly and makes the run a deterministic function
of its start noise). A ``t_start_{i+1}`` above ``t_end_i`` has the new resolution redo part of the denoising (the
paper's shifted transition; enlarging needs it: the re-noised state must hide the missing detail). A first stage at
``factor > 1`` starts from the start noise at its size, ``k P_k z``.

The plan is exact before the run: stage ``i`` spends ``nfe_i`` network calls at ``1/factor_i^2`` of the pixels;
:meth:`Bottleneck.full_equivalent` is their cost in full-resolution calls by the pixel ratio (the work of a
convolutional network; attention's grows faster). ``counts`` reports what each stage spent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..model import CallCount, Denoiser
from ..prepare import Final, check_final
from ..sampling import sample
from ..schedules import NoiseSchedule
from ..solvers import Solver
from ..spacing import SpacingLike
from .counts import check_int
from .resolution import check_mode, pooled_noise, resize
from .teleport import continuous_spacing, restrict

NOISES = ("fresh", "start")


@dataclass(frozen=True)
class Stage:
    """One stage of a bottleneck run.

    Args:
        factor: the resolution divisor (1: full size; 2: half the height and the width, a quarter of the pixels).
        nfe: the solver's requests in this stage (its network calls with the plain stack).
        t_end: the schedule time where the stage hands over (None for the last stage: it ends as the run).
        t_start: the schedule time where the stage starts, the re-noising level (None: ``t_max`` for the first
            stage, the previous stage's ``t_end`` for the others); at or above the previous stage's ``t_end`` (a
            value below it by rounding, relative 1e-12, is taken as equal).
    """

    factor: int
    nfe: int
    t_end: float | None = None
    t_start: float | None = None

    def __post_init__(self) -> None:
        check_int(self.factor, "factor", 1)
        check_int(self.nfe, "nfe", 1)
        for name in ("t_end", "t_start"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise ValueError(f"{name}: must be a finite schedule time or None, got {value!r}")


@dataclass(frozen=True)
class StageCount:
    """What one stage spent: its ``factor``, image ``size``, times, and :class:`~fewstep.model.CallCount`."""

    factor: int
    size: tuple[int, int]
    t_start: float
    t_end: float
    calls: CallCount


@dataclass
class BottleneckCounts:
    """The stages of the last run (:class:`StageCount` each)."""

    stages: list[StageCount] = field(default_factory=list)

    @property
    def network(self) -> int:
        """Network calls at any resolution."""
        return sum(s.calls.network for s in self.stages)

    @property
    def requests(self) -> int:
        return sum(s.calls.requests for s in self.stages)

    def by_factor(self) -> dict[int, int]:
        """Network calls at each resolution divisor."""
        out: dict[int, int] = {}
        for s in self.stages:
            out[s.factor] = out.get(s.factor, 0) + s.calls.network
        return out

    @property
    def full_equivalent(self) -> float:
        """The calls' cost in full-resolution calls by the pixel ratio: ``sum_i network_i / factor_i^2``."""
        return sum(s.calls.network / s.factor**2 for s in self.stages)


@dataclass
class Bottleneck:
    """A bottleneck run (module docstring): ``Bottleneck(stages).sample(model, noise, schedule, solver)``.

    Args:
        stages: the :class:`Stage` list, from ``t_max`` down; the last at ``factor=1``.
        noise: ``"fresh"`` (new standard normal noise at each re-noising, from the run's ``generator``) or
            ``"start"`` (the start noise at the stage's resolution: deterministic).
        upsample: the interpolation of the clean estimate when enlarging: ``"bilinear"``, ``"bicubic"`` or
            ``"nearest"`` (shrinking always takes block means).
    """

    stages: Sequence[Stage]
    noise: str = "fresh"
    upsample: str = "bilinear"
    counts: BottleneckCounts = field(default_factory=BottleneckCounts, init=False)

    def __post_init__(self) -> None:
        stages = list(self.stages) if isinstance(self.stages, Sequence) else None
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise TypeError(f"stages: need a non-empty list of Stage(factor, nfe, t_end, t_start), got {self.stages!r}")
        self.stages = stages
        if stages[-1].factor != 1:
            raise ValueError(f"stages: the last stage must be at full resolution (factor=1), got {stages[-1].factor}")
        if stages[-1].t_end is not None:
            raise ValueError("stages: the last stage ends as the run does; leave its t_end None")
        for i, s in enumerate(stages[:-1]):
            if s.t_end is None:
                raise ValueError(f"stages: stage {i} needs t_end, the time where it hands over to stage {i + 1}")
        if stages[0].t_start is not None:
            raise ValueError("stages: the first stage starts at the schedule's t_max; leave its t_start None")
        if self.noise not in NOISES:
            raise ValueError(f"noise: choose 'fresh' or 'start', got {self.noise!r} ('fresh' is the paper's)")
        check_mode(self.upsample)

    def network_calls(self) -> dict[int, int]:
        """The planned network calls at each resolution divisor (the plain stack: one per request)."""
        out: dict[int, int] = {}
        for s in self.stages:
            out[s.factor] = out.get(s.factor, 0) + s.nfe
        return out

    def full_equivalent(self) -> float:
        """The planned cost in full-resolution calls by the pixel ratio, ``sum_i nfe_i / factor_i^2``."""
        return sum(s.nfe / s.factor**2 for s in self.stages)

    def spans(self, schedule: NoiseSchedule) -> list[tuple[float, float]]:
        """Each stage's ``(t_start, t_end)`` on ``schedule`` (ValueError for times outside it or out of order)."""
        out: list[tuple[float, float]] = []
        previous = float(schedule.t_max)
        for i, s in enumerate(self.stages):
            start = previous if s.t_start is None else float(s.t_start)
            if start < previous and math.isclose(start, previous, rel_tol=1e-12, abs_tol=1e-15):
                start = previous  # the same time, reached by other floating-point arithmetic
            end = float(schedule.t_min) if s.t_end is None else float(s.t_end)
            if not (schedule.t_min <= end < start <= schedule.t_max):
                raise ValueError(
                    f"stages: stage {i} must span t_min <= t_end < t_start <= t_max = [{schedule.t_min}, "
                    f"{schedule.t_max}] of the schedule, got t_start={start}, t_end={end}"
                )
            if start < previous:
                raise ValueError(
                    f"stages: stage {i} must start at or above the previous stage's t_end = {previous} (re-noising "
                    f"adds noise), got t_start={start}"
                )
            out.append((start, end))
            previous = end
        return out

    def sample(
        self,
        model: Callable[..., Tensor] | Denoiser,
        noise: Tensor,
        schedule: NoiseSchedule | None = None,
        solver: str | Solver | None = None,
        spacing: SpacingLike | None = None,
        *,
        final: Final = "zero",
        generator: torch.Generator | None = None,
        calls: CallCount | None = None,
        **options: Any,
    ) -> Tensor:
        """The bottleneck run of ``model`` from ``noise`` (B, C, H, W) at ``t_max``: each stage a ``fewstep.sample``
        with ``solver`` and ``spacing`` (a continuous rule; None: ``"logsnr"``) on its span and resolution, the last
        ending as ``final`` says. ``calls`` (a :class:`~fewstep.model.CallCount`) gets the counts of all stages;
        ``options``: the other options of ``fewstep.sample`` (``nfe`` and ``steps`` are the stages')."""
        for name in ("nfe", "steps"):
            if name in options:
                raise TypeError(f"{name}: a bottleneck run spends each Stage's nfe; give them in the stages")
        if isinstance(model, Denoiser):
            denoiser = model
        elif schedule is None:
            raise ValueError("schedule: give the model's NoiseSchedule (or pass a fewstep.Denoiser as model)")
        else:
            denoiser = Denoiser(model, schedule, options.pop("prediction", "auto"))
        if not isinstance(noise, Tensor) or noise.ndim != 4:
            shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"noise: need images (B, C, H, W), got {shape}")
        h, w = noise.shape[-2:]
        for s in self.stages:
            if h % s.factor or w % s.factor:
                raise ValueError(f"stages: factor {s.factor} must divide the image size {h} x {w}")
        spacing = continuous_spacing(spacing, "each bottleneck stage spaces its own span")
        check_final(final)
        sched = denoiser.schedule
        spans = self.spans(sched)
        scale = math.hypot(float(sched.alpha(sched.t_max)), float(sched.sigma(sched.t_max)))
        z = noise / scale  # the start noise, standard normal in law
        self.counts = BottleneckCounts()
        x = pooled_noise(noise, self.stages[0].factor)
        last = len(spans) - 1
        for i, (stage, (start, end)) in enumerate(zip(self.stages, spans, strict=True)):
            size = (h // stage.factor, w // stage.factor)
            if i > 0:  # re-noise the previous stage's clean estimate at this resolution and start time
                if self.noise == "fresh":
                    device = generator.device if generator is not None else x.device
                    eps = torch.randn((x.shape[0], x.shape[1], *size), generator=generator, device=device)
                    eps = eps.to(device=x.device, dtype=x.dtype)
                else:
                    eps = pooled_noise(z, stage.factor)
                tt = torch.tensor(start, dtype=torch.float64)
                alpha, sigma = float(sched.alpha(tt)), float(sched.sigma(tt))
                x = resize(x, size, self.upsample) * alpha + eps * sigma
            window = copy.copy(denoiser)  # the same model, planned on its stage's span
            window.schedule = restrict(sched, end, start)
            stage_calls = CallCount()
            x = sample(
                window,
                x,
                solver=solver,
                nfe=stage.nfe,
                spacing=spacing,
                final=final if i == last else "zero",
                generator=generator,
                calls=stage_calls,
                **options,
            )
            self.counts.stages.append(StageCount(stage.factor, size, start, end, stage_calls))
            if calls is not None:
                calls.add(stage_calls)
        return x
