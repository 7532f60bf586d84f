"""``Denoiser``: the user's network as the solvers see it, a map ``x_t -> (x0_hat, eps_hat)``.

The network is called as it is, ``model(x_t, time, **cond)``. The Denoiser knows what it predicts
(:mod:`fewstep.predictions`), which time it takes (``"t"``, ``"sigma"`` = sigma/alpha as k-diffusion
denoisers, ``"index"`` = the fractional DDPM timestep diffusers UNets take, or any callable of t), its guidance
rule (:mod:`fewstep.guidance`) and thresholding. It is a description, shared between runs: each run builds its own
:class:`~fewstep.model.stack.ModelStack` from it (:meth:`Denoiser.stack`), which counts that run's calls.

Per-time work (schedule values, conversion coefficients, the model's time tensor) is done once in
:meth:`Denoiser.point`, before the step loop; the stack does tensor work only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..guidance.base import GuidanceRule, is_guidance_rule
from ..guidance.cfg import ClassifierFreeGuidance
from ..predictions import Affine, check_prediction, conversion, conversions
from ..schedules import DiscreteVP, Flow, NoiseSchedule
from .calls import CallCount
from .network import CheckFinite, Network
from .point import Point
from .stack import Converted, Evaluation, EvaluationWrapper, ModelOutput, ModelStack, Prediction, convert
from .threshold import Threshold

TIME_INPUTS = ("t", "sigma", "index")
#: How many (device, dtype, batch) settings :meth:`PointValues.points` keeps the Points of.
KEPT_RUNS = 4

#: ``base(output, needs_eps) -> evaluation``: a replacement for the plain conversion layer (the time shift).
BaseLayer = Callable[[ModelOutput, bool], Evaluation]


@dataclass(frozen=True, eq=False)
class PointValues:
    """The host side of the :class:`Point` s at several times: per time its schedule values, the conversion, and the
    model's time input (float64 on the CPU, never handed out). :meth:`points` makes the Points of a run, with the
    model's time on the state's device, and keeps them for the next run on the same device, dtype and batch while
    their time tensors are unchanged."""

    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    lam: tuple[float, ...]
    dalpha: tuple[float, ...]
    dsigma: tuple[float, ...]
    model_time: Tensor
    affines: tuple[Affine, ...]
    #: the Points of earlier runs by (device, time dtype, batch), with their time tensors' base and its version
    kept: dict[tuple[torch.device, torch.dtype, int], KeptPoints] = field(default_factory=dict, repr=False)

    def points(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[Point, ...]:
        """The Points of a run on ``batch`` samples on ``device`` in ``dtype``. Those of an earlier run with the same
        device, dtype and batch are handed out again unless a model wrote into one of their time tensors (the
        tensors' shared version counter moved) or flagged one for gradients: then, and on a first run, they are made
        anew, in one copy to the device and one split into batch-shaped views."""
        time_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        key = (device, time_dtype, batch)
        kept = self.kept.get(key)
        if kept is not None and kept.time._version == kept.version and not kept.flagged():
            return kept.points
        with torch.inference_mode(False):  # plain tensors: they may serve later runs that record gradients
            time = self.model_time.to(device=device, dtype=time_dtype, copy=True)
            per_node = time.unsqueeze(1).expand(len(self.t), batch).unbind(0)  # batch-shaped views, one op
        rows = zip(
            self.t, self.alpha, self.sigma, self.lam, self.dalpha, self.dsigma, per_node, self.affines, strict=True
        )
        points = tuple(map(Point._make, rows))
        if key not in self.kept and len(self.kept) >= KEPT_RUNS:  # the oldest goes
            self.kept.pop(next(iter(self.kept)), None)
        self.kept[key] = KeptPoints(time, time._version, points)
        return points


@dataclass(frozen=True)
class KeptPoints:
    """The Points of a run (:meth:`PointValues.points`), their time tensors views of ``time`` at ``version``."""

    time: Tensor
    version: int
    points: tuple[Point, ...]

    def flagged(self) -> bool:
        """Whether a model set ``requires_grad`` on one of the time tensors (a flag, which the version does not
        count)."""
        return any(point.model_time.requires_grad for point in self.points)


@dataclass
class Denoiser:
    """Wraps ``model(x, time, **model_kwargs)`` that predicts ``prediction`` under ``schedule`` (``"auto"``: velocity
    for a :class:`~fewstep.Flow` schedule, as flow-matching networks do, epsilon otherwise).

    Guidance: ``guidance=`` any rule of :mod:`fewstep.guidance`; or, as diffusers, ``guidance_scale != 1`` with
    ``uncond_kwargs`` (and ``guidance_rescale``), which builds :class:`~fewstep.guidance.ClassifierFreeGuidance`:
    both halves run as one batch (one network call, two branch evaluations).
    """

    model: Callable[..., Tensor]
    schedule: NoiseSchedule
    prediction: str = "auto"
    time_input: str | Callable[[Tensor], Tensor] = "auto"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    guidance_scale: float = 1.0
    uncond_kwargs: Mapping[str, Any] | None = None
    guidance_rescale: float = 0.0
    threshold: Threshold | None = None
    model_dtype: torch.dtype | None = None
    guidance: GuidanceRule | None = None

    def __post_init__(self) -> None:
        if not callable(self.model):
            raise TypeError(f"model: must be callable as model(x, t, **kwargs), got {type(self.model).__name__}")
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule: must be a fewstep NoiseSchedule, got {type(self.schedule).__name__}")
        if self.prediction == "auto":  # the usual output of the schedule's models: velocity for flows
            self.prediction = "velocity" if isinstance(self.schedule, Flow) else "epsilon"
        check_prediction(self.prediction)
        if self.time_input == "auto":
            self.time_input = self.schedule.default_time_input
        if not callable(self.time_input) and self.time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: choose one of 'auto', {', '.join(TIME_INPUTS)} or a callable of t")
        if self.time_input == "index" and not isinstance(self.schedule, DiscreteVP):
            raise ValueError("time_input: 'index' needs a DiscreteVP schedule")
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, int | float):
            raise TypeError(f"guidance_scale: must be a number, got {type(self.guidance_scale).__name__}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale: must be finite, got {self.guidance_scale}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale: must be in [0, 1], got {self.guidance_rescale}")
        if self.guidance_scale != 1.0:
            if self.guidance is not None:
                raise ValueError("guidance, guidance_scale: give one of them (guidance_scale builds CFG)")
            if self.uncond_kwargs is None:
                raise ValueError(
                    "uncond_kwargs: classifier-free guidance (guidance_scale != 1) needs the unconditional inputs"
                )
            self.guidance = ClassifierFreeGuidance(self.guidance_scale, self.uncond_kwargs, self.guidance_rescale)
        if self.guidance is not None and not is_guidance_rule(self.guidance):
            raise TypeError(
                "guidance: must be a guidance rule with wrap(network) or wrap_prediction(network, needs_eps) "
                f"(fewstep.guidance), got {type(self.guidance).__name__}"
            )
        if self.threshold is not None and not isinstance(self.threshold, Threshold):
            raise TypeError(f"threshold: must be a fewstep.Threshold, got {type(self.threshold).__name__}")
        if self.model_dtype is None and isinstance(self.model, torch.nn.Module):
            param = next(iter(self.model.parameters()), None)
            self.model_dtype = param.dtype if param is not None and param.is_floating_point() else None
        self._direct: ModelStack | None = None

    @property
    def guided(self) -> bool:
        return self.guidance is not None

    def time_of(self, t: Tensor) -> Tensor:
        """The network's time input for schedule times ``t`` (float64)."""
        if callable(self.time_input):
            return self.time_input(t)
        if self.time_input == "sigma":
            return torch.exp(-self.schedule.lambda_(t))
        if self.time_input == "index":
            assert isinstance(self.schedule, DiscreteVP)
            return self.schedule.index(t)
        return t

    def point(self, t: float, batch: int, device: torch.device, dtype: torch.dtype) -> Point:
        """Precompute everything for an evaluation at schedule time ``t``."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        alpha, sigma = float(self.schedule.alpha(tt)), float(self.schedule.sigma(tt))
        dalpha, dsigma = float(self.schedule.dalpha(tt)), float(self.schedule.dsigma(tt))
        affine = conversion(self.prediction, alpha, sigma, dalpha, dsigma)
        time_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        model_time = torch.as_tensor(self.time_of(tt), dtype=torch.float64).to(device=device, dtype=time_dtype)
        lam = float(self.schedule.lambda_(tt))
        return Point(float(t), alpha, sigma, lam, dalpha, dsigma, model_time.expand(batch), affine)

    def points(
        self, ts: Sequence[float] | np.ndarray, batch: int, device: torch.device, dtype: torch.dtype
    ) -> list[Point]:
        """:meth:`point` at each of ``ts``, with the schedule evaluated once for all of them (and the model's
        time moved to ``device`` in one copy). A callable ``time_input`` is still called once per time."""
        if callable(self.time_input) or len(ts) < 2:
            return [self.point(t, batch, device, dtype) for t in ts]
        return list(self.point_values(ts).points(batch, device, dtype))

    def point_values(self, ts: Sequence[float] | np.ndarray) -> PointValues:
        """The host side of :meth:`points` at two or more times (a ``time_input`` given by name): the schedule
        evaluated once for all of them."""
        tt = torch.from_numpy(np.array(ts, dtype=np.float64))
        sched = self.schedule
        values = [v.numpy() for v in (sched.alpha(tt), sched.sigma(tt), sched.dalpha(tt), sched.dsigma(tt))]
        affines = tuple(conversions(self.prediction, *values))
        lam_t = sched.lambda_(tt)
        time = torch.exp(-lam_t) if self.time_input == "sigma" else self.time_of(tt)  # time_of, lambda reused
        with torch.inference_mode(False):  # a plain tensor: it may serve later runs (its copies may need autograd)
            model_time = torch.as_tensor(time, dtype=torch.float64, device="cpu").clone()
        alpha, sigma, dalpha, dsigma = (tuple(v.tolist()) for v in values)
        return PointValues(tuple(tt.tolist()), alpha, sigma, tuple(lam_t.tolist()), dalpha, dsigma, model_time, affines)

    def stack(
        self,
        calls: CallCount,
        needs_eps: bool = True,
        base: BaseLayer | None = None,
        wrappers: Sequence[EvaluationWrapper] = (),
        check_finite: CheckFinite = "each",
        label: str = "",
    ) -> ModelStack:
        """A run's model-call stack (:mod:`fewstep.model.stack`), counting in ``calls``: the network, the guidance
        rule, the conversion (or ``base``, e.g. the time shift), thresholding, then ``wrappers`` (innermost first);
        ``check_finite``: see :mod:`fewstep.model.network`."""
        network = Network(self.model, self.model_kwargs, self.model_dtype, calls, check_finite, label)
        inner_eps = needs_eps and self.threshold is None
        rule = self.guidance
        evaluate: Evaluation
        if rule is not None and callable(getattr(rule, "wrap_prediction", None)):
            if base is not None:
                raise ValueError(
                    f"guidance: {type(rule).__name__} acts on the predictions at a point and cannot run under the "
                    "time shift (time_shift=None), which calls the network at shifted times"
                )
            evaluate = rule.wrap_prediction(network, inner_eps)  # type: ignore[union-attr]
        else:
            output: ModelOutput = rule.wrap(network) if rule is not None else network  # type: ignore[union-attr]
            evaluate = base(output, inner_eps) if base is not None else Converted(output, inner_eps)
        if self.threshold is not None:
            evaluate = self.threshold.wrap(evaluate, needs_eps, calls)
        for wrapper in wrappers:
            if not callable(getattr(wrapper, "wrap", None)):
                raise TypeError(f"wrappers: each must have wrap(inner, needs_eps, calls), got {type(wrapper).__name__}")
            evaluate = wrapper.wrap(evaluate, needs_eps, calls)
        return ModelStack(network, evaluate)

    def __call__(self, x: Tensor, p: Point, eps: bool = True) -> Prediction:
        """One evaluation at point ``p`` outside a run (not counted in any run): ``(x0_hat, eps_hat)``."""
        if self._direct is None:
            self._direct = self.stack(CallCount(), True)
        x0, e = self._direct.outer(x, p)
        return x0, (e if eps else None)

    def convert(self, x: Tensor, out: Tensor, p: Point, eps: bool = True) -> Prediction:
        """``(x0_hat, eps_hat)`` from a network output ``out`` at ``x`` (thresholding applied to x0_hat), for a caller
        that runs the network itself (the diffusers scheduler)."""
        out = out.clone()  # the caller's tensor: kept by the solver, never shared with it
        if self.threshold is None:
            return convert(x, out, p, eps)
        return self.threshold.apply(x, convert(x, out, p, False)[0], p, eps)
