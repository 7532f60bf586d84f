"""diffusers: ``FewstepScheduler``, a diffusers scheduler that runs any fewstep solver inside a pipeline.

::

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m", spacing="logsnr")

``spacing`` is a name of :data:`fewstep.spacing.SPACINGS` and ``spacing_options`` a dict of its options
(:data:`fewstep.spacing.SPACING_OPTIONS`, e.g. ``spacing="beta", spacing_options={"a": 0.5, "b": 0.7}``).

The scheduler is built from any pipeline's scheduler config: DDPM-style configs (``beta_schedule``, betas,
``prediction_type`` epsilon / sample / v_prediction, zero-terminal-SNR rescaling) give a
:class:`~fewstep.DiscreteVP` schedule and models called with diffusers' (fractional) timestep index;
flow-matching configs (``FlowMatchEulerDiscreteScheduler``: ``shift``, or ``use_dynamic_shifting`` with the
pipeline's ``mu``) give a :class:`~fewstep.Flow` schedule with a velocity model called with
``t * num_train_timesteps``.

Conventions, as diffusers' schedulers:

- ``set_timesteps(num_inference_steps)`` plans that many solver steps; a step spends the solver's evaluations
  (one for multistep solvers; Heun spends two, one on its last step to a clean end, so 50 steps are 99
  evaluations). ``set_timesteps(nfe=n)`` plans exactly ``n`` evaluations instead. ``timesteps=`` and ``sigmas=``
  give the grid itself.
- ``timesteps`` lists every model evaluation in order, and ``order`` is the evaluations of one step, so that step
  ``k`` starts at ``timesteps[k * order]`` (image-to-image pipelines start there with ``set_begin_index``).
- ``step()`` feeds each model output to the fewstep solver, a generator that yields where it wants the model
  evaluated next (``prev_sample``) and finally returns the sample. Its first call starts at the begin index, or
  else at the evaluation of ``timestep``; the ``sample`` passed in is the state (a pipeline that changes it between
  steps, as inpainting does with its mask, is followed). The solver state is float32 (or float64), whatever the
  pipeline's dtype.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, DummyObject
from torch import Tensor

from ..context import RunContext
from ..model import Denoiser, Point, Threshold
from ..nodes import NodeTable
from ..noise.source import NoiseSource
from ..prepare import check_final
from ..schedules import DiscreteVP, Flow, NoiseSchedule
from ..schedules.vp import named_betas, zero_terminal_snr
from ..solvers import Solver, get_solver
from ..solvers.base import Steps
from ..spacing import DISCRETE_SPACINGS, SPACINGS, Spacing, model_times
from ..tune.tuned import TunedSampler

PREDICTION_TYPES = {
    "epsilon": "epsilon",
    "sample": "sample",
    "v_prediction": "v_prediction",
    "flow_prediction": "velocity",
}
TIME_SHIFT_TYPES = ("exponential", "linear")
#: diffusers' schedulers for DDPM-style configs (their configs load into FewstepScheduler and back).
VP_COMPATIBLES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
)
#: diffusers' schedulers for flow-matching configs.
FLOW_COMPATIBLES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: how far (relative) a given sigma may lie outside the schedule's range and be taken as its end (rounded tables,
#: e.g. Align Your Steps' 14.615 and 0.029 for Stable Diffusion's 14.6146 and 0.0292).
SIGMA_TOLERANCE = 0.02


@dataclass
class FewstepSchedulerOutput(BaseOutput):  # type: ignore[misc]
    """``prev_sample``: where the model is evaluated next (the final sample after the last step);
    ``pred_original_sample``: the data estimate ``x0_hat`` of the evaluation just fed in."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


def _flow_shift(t: Any, shift: float) -> Any:
    """SD3's timestep shift ``g_s(t) = s t / (1 + (s - 1) t)`` (``g_s(1) = 1``; ``s > 1`` moves t towards noise)."""
    return shift * t / (1 + (shift - 1) * t)


def _stretch_to_terminal(t: np.ndarray, terminal: float) -> np.ndarray:
    """``shift_terminal``: ``t -> 1 - (1 - t) (1 - terminal) / (1 - t_last)``, so that the last time is ``terminal``."""
    return 1.0 - (1.0 - t) * (1.0 - terminal) / (1.0 - t[-1])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TypeError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


def _values(name: str, values: object) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers, strictly decreasing (ValueError naming ``name``)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be a 1-D sequence of numbers, got {type(values).__name__}") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains a non-finite value")
    if a.size > 1 and not np.all(np.diff(a) < 0):
        raise ValueError(f"{name}: must be strictly decreasing (no duplicates), got {a.tolist()}")
    return a


def _in_range(name: str, a: np.ndarray, lo: float, hi: float, lo_open: bool = False) -> None:
    """All of ``a`` in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ValueError naming ``name`` otherwise."""
    below = a[-1] <= lo if lo_open else a[-1] < lo
    if a[0] > hi or below:
        left = "(" if lo_open else "["
        raise ValueError(f"{name}: must lie in {left}{lo:g}, {hi:g}], got values from {a[-1]:g} to {a[0]:g}")


def _handed_out(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in the pipeline's dtype, never the solver's own tensor (which a later step may overwrite)."""
    out = x.to(dtype)
    return out.clone() if out is x else out


def _betas(trained: Any, name: str, n: int, start: float, end: float) -> np.ndarray:
    """The config's betas: ``trained_betas`` when given, else the table named ``beta_schedule`` (float64)."""
    if trained is not None:
        return np.asarray(trained, dtype=np.float64)
    return named_betas(name, n, start, end)


def _never_called(x: Tensor, t: Tensor) -> Tensor:
    raise RuntimeError("FewstepScheduler does not call the model; the pipeline does")


@dataclass
class _Plan:
    """A planned run: its node table and the solver's evaluation points in order, with their timesteps."""

    nodes: NodeTable
    points: list[Point]
    timesteps: np.ndarray  # float32, as the pipeline passes them back


@dataclass
class _Run:
    """A run in progress from the evaluation ``offset`` of the plan, over ``nodes`` (the plan's or a tail)."""

    nodes: NodeTable
    points: list[Point]
    offset: int
    window: tuple[float, float] | None = None  # the steps that may add noise (RunContext.sde_window)
    solver: Solver | None = None  # the solver of this run where it is not the scheduler's (a step entered part-way)
    idle: int | None = None  # the evaluation (from the offset) whose output is not used: a stage at the step's end
    steps: Steps | None = None
    request: Tensor | None = None  # the state the solver asked about last (and continues from)
    returned: Tensor | None = None  # the tensor handed back to the pipeline last
    noise: NoiseSource = field(default_factory=NoiseSource)  # draws from the generator of the current step()


class FewstepScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """A diffusers scheduler backed by a fewstep solver (see the module docstring)."""

    order = 1  # per instance: the evaluations of one step of the solver
    _compatibles: list[str] = [*VP_COMPATIBLES, *FLOW_COMPATIBLES]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        steps_offset: int = 0,
        flow: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
        solver: str = "dpmpp_2m",
        spacing: str = "logsnr",
        spacing_options: dict[str, Any] | None = None,
        final: str = "zero",
        solver_options: dict[str, Any] | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ):
        _positive_int("num_train_timesteps", num_train_timesteps)
        check_final(final)
        self._check_spacing(spacing, spacing_options, flow)
        if flow:
            self._check_flow_options(prediction_type, shift, time_shift_type, shift_terminal)
            self._init_flow(num_train_timesteps, shift, use_dynamic_shifting)
        else:
            betas = _betas(trained_betas, beta_schedule, num_train_timesteps, beta_start, beta_end)
            self._init_vp(betas, prediction_type, rescale_betas_zero_snr)
        self.solver: Solver = get_solver(solver, **(solver_options or {}))
        threshold = Threshold(dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self.denoiser = Denoiser(
            _never_called, self.schedule, self.prediction, time_input=self._time_input, threshold=threshold
        )
        self.init_noise_sigma = 1.0
        self.order = self.solver.nfe_per_step
        self.num_inference_steps: int | None = None
        self.timesteps, self.sigmas = self._training_tables()
        self._plan: _Plan | None = None
        self._run: _Run | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # --- construction -----------------------------------------------------------------------------------------

    @staticmethod
    def _check_spacing(spacing: object, options: object, flow: bool) -> None:
        if spacing not in SPACINGS:
            raise ValueError(f"spacing: choose one of {', '.join(SPACINGS)}, got {spacing!r}")
        if flow and spacing in DISCRETE_SPACINGS:
            raise ValueError(f"spacing: {spacing!r} is for DDPM-style configs; use uniform, logsnr, karras, ...")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"spacing_options: must be a dict of the spacing's options, got {type(options).__name__}")
        Spacing.of(str(spacing), options)  # ValueError naming a wrong option

    @staticmethod
    def _check_flow_options(
        prediction_type: str, shift: float, time_shift_type: str, shift_terminal: float | None
    ) -> None:
        if prediction_type not in ("flow_prediction", "velocity", "epsilon"):  # epsilon: the argument's default
            raise ValueError(f"prediction_type: a flow config predicts velocity, got {prediction_type!r}")
        if not _number("shift", shift) > 0:
            raise ValueError(f"shift: must be > 0, got {shift}")
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type: choose one of {', '.join(TIME_SHIFT_TYPES)}, got {time_shift_type!r}")
        if shift_terminal is not None and not 0 < _number("shift_terminal", shift_terminal) < 1:
            raise ValueError(f"shift_terminal: must lie in (0, 1), got {shift_terminal}")

    def _init_flow(self, n_train: int, shift: float, dynamic: bool) -> None:
        """``x_t = (1 - t) x0 + t eps``; the model takes ``t * num_train_timesteps`` and predicts ``eps - x0``.
        diffusers' grid runs from t = 1 to its smallest training time ``g_s(1/N)`` (``1/N`` when shifting is
        dynamic), the schedule's ``t_min`` here."""
        t_low = 1.0 / n_train if dynamic else float(_flow_shift(1.0 / n_train, shift))
        self.schedule: NoiseSchedule = Flow(t_min=t_low)
        self.prediction = "velocity"
        self._time_input: Any = lambda t: t * n_train

    def _init_vp(self, betas: np.ndarray, prediction_type: str, rescale: bool) -> None:
        """DDPM's ``x_t = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps``; the model takes the (fractional) index n."""
        if prediction_type not in PREDICTION_TYPES or prediction_type == "flow_prediction":
            allowed = ", ".join(p for p in PREDICTION_TYPES if p != "flow_prediction")
            raise ValueError(
                f"prediction_type: choose one of {allowed} (flow_prediction needs a flow config), "
                f"got {prediction_type!r}"
            )
        schedule = DiscreteVP(betas=betas, rescale_zero_terminal_snr=rescale)
        abar = schedule.alphas_cumprod  # rescaled: its last value clamped to 2**-24, as diffusers' tables
        if rescale:  # beta_n = 1 - abar_n / abar_{n-1} of the rescaled table (its last one 1)
            rescaled = zero_terminal_snr(np.cumprod(1.0 - betas))
            betas = 1.0 - rescaled / np.concatenate([[1.0], rescaled[:-1]])
        self.schedule = schedule
        self.prediction = PREDICTION_TYPES[prediction_type]
        self._time_input = "index"
        self.betas = torch.tensor(betas, dtype=torch.float32)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.tensor(abar, dtype=torch.float32)

    def _training_tables(self) -> tuple[Tensor, Tensor]:
        """``timesteps`` and ``sigmas`` before ``set_timesteps``: every training timestep, noisiest first."""
        n = int(self.cfg.num_train_timesteps)
        if self.cfg.flow:  # as FlowMatchEulerDiscreteScheduler: t = n / N, shifted unless shifting is dynamic
            t = np.linspace(1, n, n)[::-1] / n
            if not self.cfg.use_dynamic_shifting:
                t = _flow_shift(t, float(self.cfg.shift))
            return torch.tensor(t * n, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
        sched = self.schedule
        assert isinstance(sched, DiscreteVP)
        index = torch.arange(sched.num_train_timesteps - 1, -1, -1, dtype=torch.float64)
        levels = sched.level(sched.t_of_index(index))  # k-diffusion's sigma = sqrt((1 - abar) / abar)
        return index.float(), torch.cat([levels, torch.zeros(1, dtype=torch.float64)]).float()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As :meth:`ConfigMixin.from_config`; a flow-matching config (``FlowMatch*`` scheduler, or
        ``use_flow_sigmas`` with ``flow_shift``) selects the flow schedule."""
        cfg = dict(config or {})
        if cfg.get("invert_sigmas"):
            raise ValueError("invert_sigmas: inverted flow sigmas are not supported by FewstepScheduler")
        if "flow" not in kwargs and "flow" not in cfg and _is_flow_config(cfg):
            kwargs["flow"] = True
            cfg.setdefault("prediction_type", "flow_prediction")
            if cfg.get("use_flow_sigmas") and "shift" not in cfg and "shift" not in kwargs:
                cfg["shift"] = cfg.get("flow_shift", 1.0)
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def cfg(self) -> Any:
        """The registered config (attribute access)."""
        return self.config

    @property
    def compatibles(self) -> list[type]:
        """diffusers' schedulers for this config's family (DDPM-style or flow matching)."""
        names = FLOW_COMPATIBLES if self.cfg.flow else VP_COMPATIBLES
        classes = [getattr(diffusers, name, None) for name in names]
        return [c for c in classes if c is not None and not isinstance(c, DummyObject)]

    @property
    def step_index(self) -> int | None:
        """The index in ``timesteps`` of the next evaluation (None before the first ``step()``)."""
        return self._step_index

    @property
    def node_times(self) -> np.ndarray:
        """The schedule times of the planned run's grid nodes, decreasing, the last one NaN where the run ends at the
        clean data (``final="zero"``); RuntimeError before ``set_timesteps``."""
        if self._plan is None:
            raise RuntimeError("set_timesteps: call it before reading node_times")
        return np.array(self._plan.nodes.t, dtype=np.float64)

    @property
    def begin_index(self) -> int | None:
        """The index in ``timesteps`` the run starts at (``set_begin_index``; None when not set)."""
        return self._begin_index

    @property
    def nfe(self) -> int:
        """The model evaluations of the planned run (``len(timesteps)`` after ``set_timesteps``)."""
        if self._plan is None:
            raise RuntimeError("set_timesteps: call it before reading nfe")
        return len(self._plan.points)

    def __len__(self) -> int:
        return int(self.cfg.num_train_timesteps)

    # --- planning ---------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
        mu: float | None = None,
        nfe: int | None = None,
        tuned: TunedSampler | None = None,
    ) -> None:
        """Plan a run of ``num_inference_steps`` solver steps (or exactly ``nfe`` evaluations, or on the grid of
        ``timesteps`` / ``sigmas``); ``mu`` is the dynamic shift of SD3/Flux configs with ``use_dynamic_shifting``.

        - ``tuned``: a :class:`fewstep.tune.TunedSampler` tuned on this scheduler's schedule: the run uses its
          solver (and options) and its times, ``tuned.nfe`` evaluations (give no other count but that ``nfe``);
          a later call without ``tuned`` returns to the configured solver.

        - ``timesteps``: the model's timesteps of the grid, noisiest first (DDPM-style: training indices, possibly
          fractional; flows: ``t * num_train_timesteps``, used as given, unshifted); the run ends with ``final``.
        - ``sigmas``: DDPM-style, k-diffusion's sigmas ``sqrt((1 - abar) / abar)`` including the last one (0: a
          clean end); flows, ``t`` before the shift, as ``FlowMatchEulerDiscreteScheduler`` (the run ends at 0).
        """
        if tuned is not None:
            self._plan_tuned(tuned, num_inference_steps, timesteps, sigmas, nfe, device)
            return
        if getattr(self, "_tuned_solver", False):  # the last run was a TunedSampler's: back to the configured solver
            self.solver = get_solver(self.cfg.solver, **(self.cfg.solver_options or {}))
            self.order, self._tuned_solver = self.solver.nfe_per_step, False
        steps = self._check_counts(num_inference_steps, timesteps, sigmas, nfe)
        shift = self._inference_shift(mu)
        budget = None
        if timesteps is not None:
            node_t, clean_end = self._given_timesteps(timesteps)
        elif sigmas is not None:
            node_t, clean_end = self._given_sigmas(sigmas, shift)
        else:
            node_t, clean_end, budget = self._spaced_times(steps, nfe, shift)
        nodes = NodeTable.build(self.denoiser, node_t, clean_end, 1, torch.device("cpu"), torch.float32, budget)
        if steps is not None and nodes.steps != steps:
            raise ValueError(f"num_inference_steps: {steps} does not match the {nodes.steps} steps of the grid given")
        planned = self.solver.nfe(nodes)
        if nfe is not None and planned != nfe:
            raise ValueError(f"nfe: {self.solver.name!r} spends {planned} evaluations on the {nodes.steps} steps given")
        self._set_plan(nodes, device)

    def _plan_tuned(
        self, tuned: TunedSampler, steps: object, timesteps: object, sigmas: object, nfe: object, device: Any
    ) -> None:
        """Plan the tuned sampler's run: its solver, times and NFE (ValueError naming a contradicting option)."""
        if not isinstance(tuned, TunedSampler):
            raise TypeError(f"tuned: must be a fewstep.tune.TunedSampler, got {type(tuned).__name__}")
        for name, value in (("num_inference_steps", steps), ("timesteps", timesteps), ("sigmas", sigmas)):
            if value is not None:
                raise ValueError(f"{name}: a TunedSampler brings its own times; leave {name} out")
        if nfe is not None and nfe != tuned.nfe:
            raise ValueError(f"nfe: the TunedSampler spends {tuned.nfe} evaluations, not {nfe}")
        if self.cfg.final != "zero":
            raise ValueError("final: a TunedSampler ends with a step to sigma = 0; configure final='zero'")
        tuned.check(schedule=self.schedule)
        self.solver = get_solver(tuned.solver, **tuned.solver_options)
        self.order, self._tuned_solver = self.solver.nfe_per_step, True
        node_t = np.concatenate([np.asarray(tuned.times, dtype=np.float64), [math.nan]])
        nodes = NodeTable.build(self.denoiser, node_t, True, 1, torch.device("cpu"), torch.float32)
        if self.solver.nfe(nodes) != tuned.nfe:
            raise ValueError(f"tuned: {tuned.solver!r} spends {self.solver.nfe(nodes)} evaluations, not {tuned.nfe}")
        self._set_plan(nodes, device)

    @staticmethod
    def _check_counts(steps: object, timesteps: object, sigmas: object, nfe: object) -> int | None:
        """``num_inference_steps`` checked (None when not given); one of the ways to size the run is given."""
        if timesteps is not None and sigmas is not None:
            raise ValueError("timesteps, sigmas: give one of them, not both")
        if steps is not None and nfe is not None:
            raise ValueError("num_inference_steps, nfe: give one of them (nfe plans that many evaluations)")
        if steps is None and nfe is None and timesteps is None and sigmas is None:
            raise ValueError("num_inference_steps: give the number of steps (or nfe=, timesteps= or sigmas=)")
        if nfe is not None:
            _positive_int("nfe", nfe)
        return None if steps is None else _positive_int("num_inference_steps", steps)

    def _inference_shift(self, mu: object) -> float:
        """The flow timestep shift ``s`` of ``g_s``: ``shift``, or with ``use_dynamic_shifting`` ``exp(mu)``
        (``time_shift_type="exponential"``: ``e^mu / (e^mu + 1/t - 1) = g_{e^mu}(t)``) or ``mu`` ("linear")."""
        cfg = self.cfg
        if not cfg.flow:
            if mu is not None:
                raise ValueError("mu: the dynamic shift is for flow-matching configs, not a DDPM-style one")
            return 1.0
        if not cfg.use_dynamic_shifting:
            return float(cfg.shift)  # mu is ignored, as diffusers' flow-matching schedulers do (Flux passes it)
        if mu is None:
            raise ValueError("mu: required with use_dynamic_shifting=True (pipelines compute it from the image size)")
        m = _number("mu", mu)
        s = math.exp(m) if cfg.time_shift_type == "exponential" else m
        if not s > 0:
            raise ValueError(f"mu: must be > 0 with time_shift_type='linear', got {m}")
        return s

    def _final_node(self, node_t: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
        """The grid's end after the given model times: the clean end (``final="zero"``) or ``t_min``."""
        if self.cfg.final == "zero":
            return np.concatenate([node_t, [math.nan]]), True
        t_min = float(self.schedule.t_min)
        if not node_t[-1] > t_min:
            raise ValueError(f"{name}: with final='t_min' the last one must lie above the schedule's t_min {t_min:g}")
        return np.concatenate([node_t, [t_min]]), False

    def _given_timesteps(self, timesteps: object) -> tuple[np.ndarray, bool]:
        ts = _values("timesteps", timesteps)
        n = float(self.cfg.num_train_timesteps)
        if self.cfg.flow:  # t = timestep / N, as the model is told
            _in_range("timesteps", ts, 0.0, n, lo_open=True)
            return self._final_node(ts / n, "timesteps")
        sched = self.schedule
        assert isinstance(sched, DiscreteVP)
        _in_range("timesteps", ts, 0.0, sched.num_train_timesteps - 1.0)
        return self._final_node(sched.t_of_index(torch.from_numpy(ts)).numpy(), "timesteps")

    def _given_sigmas(self, sigmas: object, shift: float) -> tuple[np.ndarray, bool]:
        if self.cfg.flow:  # t before the shift; the run ends at t = 0 (FlowMatchEulerDiscreteScheduler)
            u = _values("sigmas", sigmas)
            _in_range("sigmas", u, 0.0, 1.0, lo_open=True)
            return np.concatenate([self._shifted(u, "sigmas", shift), [math.nan]]), True
        return self._vp_sigmas(_values("sigmas", sigmas))

    def _vp_sigmas(self, levels: np.ndarray) -> tuple[np.ndarray, bool]:
        """k-diffusion sigmas (the last one the run's end: 0 for a clean end) as DiscreteVP times."""
        clean_end = levels[-1] == 0.0
        model_levels = levels[:-1] if clean_end else levels
        if model_levels.size < (1 if clean_end else 2):
            raise ValueError("sigmas: give at least one step (two values, the last one the end)")
        sched = self.schedule
        top, bottom = float(sched.level(sched.t_max)), float(sched.level(sched.t_min))
        _in_range("sigmas", model_levels, bottom * (1.0 - SIGMA_TOLERANCE), top * (1.0 + SIGMA_TOLERANCE))
        t = sched.t_of_level(torch.from_numpy(np.clip(model_levels, bottom, top))).numpy()
        t = np.clip(t, sched.t_min, sched.t_max)
        if t.size > 1 and not np.all(np.diff(t) < 0):
            raise ValueError(f"sigmas: two of them fall on the same end of the schedule's range [{bottom:g}, {top:g}]")
        return (np.concatenate([t, [math.nan]]) if clean_end else t), bool(clean_end)

    def _spaced_times(self, steps: int | None, nfe: int | None, shift: float) -> tuple[np.ndarray, bool, int | None]:
        """The grid of ``spacing`` for ``steps`` steps (or for the steps that spend ``nfe`` evaluations)."""
        sched, cfg = self.schedule, self.cfg
        clean_end = check_final(cfg.final)
        if steps is None:
            assert nfe is not None
            first_infinite = float(sched.alpha(sched.t_max)) == 0.0
            steps = self.solver.steps_for_nfe(nfe, first_infinite, clean_end)
        n = steps if clean_end else steps + 1
        spacing = Spacing.of(cfg.spacing, cfg.get("spacing_options"))
        times = model_times(sched, n, spacing, steps_offset=cfg.steps_offset).numpy()
        if cfg.flow:
            times = self._shifted(times, "num_inference_steps", shift)
        node_t = np.concatenate([times, [math.nan]]) if clean_end else times
        return node_t, clean_end, nfe

    def _shifted(self, u: np.ndarray, name: str, shift: float) -> np.ndarray:
        """Flow times ``g_s(u)`` (then stretched to ``shift_terminal`` when set), checked strictly decreasing."""
        t = np.asarray(_flow_shift(u, shift), dtype=np.float64)
        terminal = self.cfg.shift_terminal
        if terminal is not None:
            if t[-1] >= 1.0:
                raise ValueError(f"{name}: shift_terminal needs a grid that ends below t = 1")
            t = _stretch_to_terminal(t, float(terminal))
        if (t.size > 1 and not np.all(np.diff(t) < 0)) or not (t[-1] > 0 and t[0] <= 1):
            raise ValueError(f"{name}: the shift {shift:g} merges neighbouring times or leaves (0, 1]; use fewer steps")
        return t

    def _set_plan(self, nodes: NodeTable, device: str | torch.device | None) -> None:
        points = self._evaluation_points(nodes)
        t = torch.tensor([p.t for p in points], dtype=torch.float64)
        timesteps = torch.as_tensor(self.denoiser.time_of(t), dtype=torch.float64).to(torch.float32)
        last = torch.from_numpy(nodes.t[-1:].copy())
        end = torch.zeros(1, dtype=torch.float64) if nodes.clean_end else self.schedule.level(last)
        self._plan = _Plan(nodes, points, timesteps.numpy())
        self.timesteps = timesteps.to(device)
        self.sigmas = torch.cat([self.schedule.level(t), end]).to(torch.float32).to(device)
        self.num_inference_steps = nodes.steps
        self.order = self._evaluations_per_step(nodes, len(points))
        self._run, self._step_index, self._begin_index = None, None, None

    def _evaluation_points(
        self, nodes: NodeTable, window: tuple[float, float] | None = None, solver: Solver | None = None
    ) -> list[Point]:
        """The solver's (or ``solver``'s) evaluation points in order, from a dry run on a scalar state."""
        points: list[Point] = []
        zero = torch.zeros(1, 1)  # a batch of one (solvers may reduce over the non-batch dimensions)

        def record(_x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
            points.append(p)
            return zero, zero

        dry_run = RunContext(nodes, NoiseSource(sampler=lambda _s, _t: zero), sde_window=window)  # no draws
        (solver or self.solver).run(zero, nodes, dry_run, record)
        return points

    def _evaluations_per_step(self, nodes: NodeTable, total: int) -> int:
        """The evaluations of one step: the most between the starts of the first steps, where step k starts after
        ``total`` minus the evaluations of a run from node k."""
        first = range(1, min(nodes.steps, 4))
        starts = [0, *(total - self.solver.nfe(nodes.tail(k)) for k in first)]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        return max(gaps) if gaps else self.solver.nfe_per_step

    # --- starting part-way ------------------------------------------------------------------------------------

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at the evaluation ``begin_index`` of ``timesteps`` (image-to-image pipelines skip the noisiest
        steps: ``begin_index = k * order`` starts step k). The run is re-planned from that grid node on, at the
        same times; ValueError where no step starts there."""
        if self._plan is None:
            raise RuntimeError("set_timesteps: call it before set_begin_index()")
        if isinstance(begin_index, bool) or not isinstance(begin_index, numbers.Integral):
            raise TypeError(f"begin_index: must be an integer, got {begin_index!r}")
        if not 0 <= begin_index < len(self._plan.points):
            raise ValueError(f"begin_index: must lie in [0, {len(self._plan.points) - 1}], got {begin_index}")
        self._run = self._run_from(int(begin_index))
        self._begin_index, self._step_index = int(begin_index), None

    def _run_from(self, e: int) -> _Run:
        """A run whose evaluations are the plan's from evaluation ``e`` on (ValueError if no step starts there)."""
        plan = self._plan
        assert plan is not None
        if e == 0:
            return _Run(plan.nodes, plan.points, 0)
        tail = self._tail_at(plan, e)
        if tail is None:
            entered = self._entered_step(plan, e)
            if entered is not None:
                return entered
            starts = self._step_starts(plan, limit=8)
            raise ValueError(
                f"begin_index: no step of {self.solver.name!r} starts at evaluation {e} of this plan (steps start at "
                f"evaluations {starts}, ...; order = {self.order}); begin at one of them"
            )
        nodes, points, window = tail
        return _Run(nodes, points, e, window)

    def _tail_at(self, plan: _Plan, e: int) -> tuple[NodeTable, list[Point], tuple[float, float] | None] | None:
        """The node table from the grid node k on whose run evaluates exactly at the plan's points ``e:`` (and the
        noise window of that run)."""
        remaining = len(plan.points) - e
        k = self._candidate_node(plan, e, remaining)
        if k is None:
            return None
        tail = plan.nodes.tail(k)
        if plan.nodes.nfe_budget is not None:  # an exact-NFE plan: the tail spends what is left of it
            try:
                fits = self.solver.steps_for_nfe(remaining, tail.first_infinite, tail.clean_end) == tail.steps
            except ValueError:
                fits = False
            if not fits:
                return None
            tail = replace(tail, nfe_budget=remaining)
        if self.solver.nfe(tail) != remaining:
            return None
        points = self._evaluation_points(tail)
        window = None
        if points[0].t != tail.t[0]:  # the step evaluates off its node (EDM's churn): start at that evaluation
            tail, window = self._started_at(tail, points[0].t)
            points = self._evaluation_points(tail, window)
        same = [p.t for p in points] == [p.t for p in plan.points[e:]]
        return (tail, points, window) if same else None

    def _entered_step(self, plan: _Plan, e: int) -> _Run | None:
        """A run from evaluation ``e`` inside a step of a singlestep solver (image-to-image with ``begin_index =
        k * order`` where the first step, from alpha = 0, spends fewer evaluations than ``order``): the entered step's
        evaluations left, at its stage times ``t_e > ... > t_{e+m-1}``, become first-order steps between them and down
        to the step's end node, after which the plan continues unchanged. A last stage at the step's end node (a
        solver with r = 1, as exp_heun_2_x0) is that node's evaluation a step early: its output is not used and the
        sample is handed back as it is. The evaluations are the plan's ``e:``, so the pipeline's ``timesteps[e:]``
        are where the model is called, and their number is what diffusers' loop spends."""
        nodes = plan.nodes
        starts = [next(i for i, p in enumerate(plan.points) if p is q) for q in nodes.points[: nodes.steps]]
        j = max(k for k, start in enumerate(starts) if start <= e)
        end = starts[j + 1] if j + 1 < len(starts) else len(plan.points)
        mids = [p.t for p in plan.points[e:end]]
        t_next = float(nodes.t[j + 1])
        idle = None
        if math.isclose(mids[-1], t_next, rel_tol=1e-12):  # the last stage sits at the step's end node (r = 1)
            mids, idle = mids[:-1], len(mids) - 1
        if not all(a > b for a, b in zip(mids, [*mids[1:], t_next], strict=False)):
            return None  # the stages are not strictly between the step's ends in decreasing order
        node_t = np.array([*mids, *nodes.t[j + 1 :]], dtype=np.float64)
        tail = NodeTable.build(self.denoiser, node_t, nodes.clean_end, 1, torch.device("cpu"), torch.float32)
        solver = _with_orders(self.solver, [1] * len(mids) + self.solver.step_orders(nodes)[j + 1 :])
        try:
            points = self._evaluation_points(tail, solver=solver)
        except (ValueError, IndexError, AssertionError):  # a solver whose plan is not its step orders alone
            return None
        if idle is not None:
            points = [*points[:idle], plan.points[e + idle], *points[idle:]]  # that node's evaluation, twice
        asked, planned = [p.t for p in points], [p.t for p in plan.points[e:]]  # the dry run: where the solver asks
        if len(asked) != len(planned) or not all(
            math.isclose(a, b, rel_tol=1e-12) for a, b in zip(asked, planned, strict=True)
        ):
            return None
        return _Run(tail, points, e, None, solver=solver, idle=idle)

    def _started_at(self, tail: NodeTable, t: float) -> tuple[NodeTable, tuple[float, float]]:
        """The tail with its first node moved to ``t``, the time of its first evaluation (where the pipeline's
        sample is: image-to-image noises to ``timesteps[begin_index]``), and a noise window that leaves its first
        step deterministic (the sample already carries the noise a churn would have added)."""
        node_t = np.array(tail.t, dtype=np.float64)
        node_t[0] = t
        nodes = NodeTable.build(
            self.denoiser, node_t, tail.clean_end, 1, torch.device("cpu"), torch.float32, tail.nfe_budget
        )
        later = float(node_t[1]) if tail.steps > 1 else -math.inf  # steps that start at or below it may add noise
        return nodes, (later, -math.inf)

    def _candidate_node(self, plan: _Plan, e: int, remaining: int) -> int | None:
        """The grid node whose step may start at evaluation ``e``: the node evaluated there, or else the node from
        which the solver's remaining evaluations number ``remaining`` (they decrease with the node)."""
        nodes = plan.nodes
        for k, p in enumerate(nodes.points[: nodes.steps]):
            if p is plan.points[e]:
                return k
        lo, hi = 1, nodes.steps - 1
        while lo <= hi:  # bisection on the decreasing count of the tail's evaluations
            k = (lo + hi) // 2
            count = self.solver.nfe(nodes.tail(k))
            if count == remaining:
                return k
            lo, hi = (k + 1, hi) if count > remaining else (lo, k - 1)
        return None

    def _step_starts(self, plan: _Plan, limit: int) -> list[int]:
        """The first ``limit`` evaluations at which a step starts (for the error message)."""
        candidates = range(min(len(plan.points), 16 * limit))
        return [e for e in candidates if e == 0 or self._tail_at(plan, e) is not None][:limit]

    def _index_for_timestep(self, timestep: Any) -> int:
        """The evaluation where a step starts at ``timestep`` (the later one of equal timesteps, as diffusers)."""
        plan = self._plan
        assert plan is not None
        value = self._timestep_value(timestep)
        for e in np.flatnonzero(plan.timesteps == np.float32(value)).tolist():
            if e == 0 or self._tail_at(plan, e) is not None:
                return int(e)
        shown = ", ".join(f"{v:g}" for v in plan.timesteps[:6])
        raise ValueError(
            f"timestep: {value:g} is not where a step of this plan starts (timesteps begin {shown}, ...); pass one "
            "of scheduler.timesteps, or call set_begin_index"
        )

    @staticmethod
    def _timestep_value(timestep: Any) -> float:
        if isinstance(timestep, Tensor):
            if timestep.numel() == 0:
                raise ValueError("timestep: got an empty tensor")
            return float(timestep.reshape(-1)[0])
        return _number("timestep", timestep)

    # --- the pipeline's loop ----------------------------------------------------------------------------------

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The model takes ``x_t`` itself."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> FewstepSchedulerOutput | tuple[Tensor, Tensor]:
        """Feed the model output at ``sample`` to the solver; return where it wants the next evaluation.

        The first call starts at the begin index, or else at the evaluation of ``timestep``. Stochastic solvers
        draw their noise with ``generator`` (the pipeline's; a list gives one generator per sample), as diffusers'
        schedulers do."""
        if self._plan is None:
            raise RuntimeError("set_timesteps: call it before step()")
        if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
            raise TypeError("model_output, sample: must be tensors")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output: shape {tuple(model_output.shape)} differs from the sample's {tuple(sample.shape)}"
            )
        if self._step_index is None:
            self._start(timestep)
        run = self._run
        assert run is not None and self._step_index is not None
        i = self._step_index - run.offset
        if i >= len(run.points):
            raise RuntimeError("step: the planned evaluations are used up; call set_timesteps again")
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        if i == run.idle:  # an evaluation at the node the sample is already at, asked for again next: not used
            self._step_index += 1
            x0, _ = self.denoiser.convert(sample.to(dtype), model_output.to(dtype), run.points[i], False)
            out = run.returned = sample.clone()
        else:
            self._noise_of(run, generator, sample)
            x = self._state(run, sample, dtype)
            needs_eps = (run.solver or self.solver).needs_eps
            x0, eps = self.denoiser.convert(x, model_output.to(dtype), run.points[i], needs_eps)
            self._step_index += 1
            assert run.steps is not None
            try:
                run.request, _ = run.steps.send((x0, eps))
                out = _handed_out(run.request, sample.dtype)
            except StopIteration as done:
                out, run.steps, run.request = done.value.to(sample.dtype), None, None
            run.returned = out
        x0_out = _handed_out(x0, sample.dtype)
        return FewstepSchedulerOutput(prev_sample=out, pred_original_sample=x0_out) if return_dict else (out, x0_out)

    def _start(self, timestep: Any) -> None:
        """The first ``step()``: from the begin index when set, else from the evaluation of ``timestep``."""
        if self._begin_index is None:  # set_begin_index made the run otherwise
            self._run = self._run_from(self._index_for_timestep(timestep))
        assert self._run is not None
        self._step_index = self._run.offset

    def _state(self, run: _Run, sample: Tensor, dtype: torch.dtype) -> Tensor:
        """The solver's state at this evaluation: the pipeline's ``sample`` (copied into the tensor the solver
        continues from when the pipeline changed it after the last step)."""
        if run.steps is None:
            x = sample.to(dtype)
            x = x.clone() if x is sample else x  # the pipeline's tensor is never written to
            solver = run.solver or self.solver
            run.steps = solver.solve(x, run.nodes, RunContext(run.nodes, run.noise, sde_window=run.window))
            run.request, _ = next(run.steps)
        elif sample is not run.returned:
            assert run.request is not None
            run.request.copy_(sample)
        assert run.request is not None
        return run.request

    @staticmethod
    def _noise_of(run: _Run, generator: object, sample: Tensor) -> None:
        """The run's noise source draws from the pipeline's generator (a list: one generator per sample)."""
        if generator is None or isinstance(generator, torch.Generator):
            run.noise.generator, run.noise.sampler = generator, None
            return
        gens = list(generator) if isinstance(generator, list | tuple) else None
        if gens is None or len(gens) != sample.shape[0] or not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError(
                f"generator: must be a torch.Generator or a list of {sample.shape[0]} (one per sample), got "
                f"{type(generator).__name__}"
            )
        shape, dtype = (1, *sample.shape[1:]), torch.float64 if sample.dtype == torch.float64 else torch.float32

        def per_sample(_s: float, _t: float) -> Tensor:  # each sample's noise from its own generator
            draws = [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in gens]
            return torch.cat([z.to(sample.device) for z in draws])

        run.noise.generator, run.noise.sampler = None, per_sample

    # --- the forward process ----------------------------------------------------------------------------------

    def _coefficients(self, timesteps: Any, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha, sigma)`` at the given (pipeline) timesteps, shaped to broadcast against ``like``: flows
        ``(1 - t, t)`` with ``t = timestep / N``; DDPM-style integer timesteps from the tables, others interpolated."""
        ts = torch.as_tensor(timesteps)
        shape = (-1,) + (1,) * (like.ndim - 1)
        work = torch.float64 if like.dtype == torch.float64 else torch.float32
        if self.cfg.flow:  # on the device, in float32 (float64 for a float64 sample)
            t = (ts.to(like.device).to(work) / self.cfg.num_train_timesteps).reshape(shape)
            return (1.0 - t).to(like.dtype), t.to(like.dtype)
        sched = self.schedule
        assert isinstance(sched, DiscreteVP)
        if not ts.is_floating_point():  # a table lookup on the device (no host sync in a training loop)
            abar = torch.from_numpy(sched.alphas_cumprod).to(work).to(like.device)[ts.to(like.device).long()]
            return abar.sqrt().reshape(shape).to(like.dtype), (1.0 - abar).sqrt().reshape(shape).to(like.dtype)
        t = sched.t_of_index(ts.detach().cpu().to(torch.float64)).reshape(-1)
        alpha, sigma = sched.alpha(t).to(like.dtype), sched.sigma(t).to(like.dtype)
        return alpha.to(like.device).reshape(shape), sigma.to(like.device).reshape(shape)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Any) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise`` at the given (pipeline) timesteps."""
        alpha, sigma = self._coefficients(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def scale_noise(self, sample: Tensor, timestep: Any, noise: Tensor | None = None) -> Tensor:
        """The flow-matching pipelines' name of :meth:`add_noise`: ``x_t = alpha(t) sample + sigma(t) noise``."""
        if noise is None:
            raise ValueError("noise: scale_noise needs the noise tensor")
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Any) -> Tensor:
        """The training target of a velocity model: ``v = alpha noise - sigma x0`` (DDPM-style configs, as
        diffusers' ``v_prediction``); flows: ``noise - x0``."""
        if self.cfg.flow:
            return noise - sample
        alpha, sigma = self._coefficients(timesteps, sample)
        return alpha * noise - sigma * sample


def _with_orders(solver: Solver, orders: list[int]) -> Solver:
    """A copy of ``solver`` whose plan is the given step orders (the evaluations a singlestep step spends)."""
    planned = copy.copy(solver)
    planned.step_orders = lambda nodes: list(orders)  # type: ignore[method-assign]  # shadows the class's plan
    return planned


def _is_flow_config(cfg: dict[str, Any]) -> bool:
    """A flow-matching scheduler's config: a ``FlowMatch*`` class, ``use_flow_sigmas``, or a shift without betas."""
    return (
        str(cfg.get("_class_name", "")).startswith("FlowMatch")
        or bool(cfg.get("use_flow_sigmas"))
        or ("shift" in cfg and "beta_schedule" not in cfg)
    )
