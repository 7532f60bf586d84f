"""diffusers: ``FewstepScheduler``, a drop-in scheduler that runs any fewstep solver inside a pipeline.

::

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m", spacing="logsnr")

The scheduler is built from any pipeline's scheduler config: DDPM-style configs (``beta_schedule``, betas,
``prediction_type`` epsilon / sample / v_prediction, zero-terminal-SNR rescaling) give a
:class:`~fewstep.DiscreteVP` schedule and models called with diffusers' (fractional) timestep index;
``FlowMatchEulerDiscreteScheduler`` configs (``shift``) give a :class:`~fewstep.Flow` schedule with a velocity
model called with ``t * num_train_timesteps``.

``num_inference_steps`` is the NFE: ``timesteps`` lists every model evaluation, in order (singlestep solvers
evaluate at intermediate times too), and ``step()`` feeds each model output to the fewstep solver, which
is a generator that yields where it wants the model evaluated next (``prev_sample``) and finally returns the
sample. The solver state is float32 (or float64), whatever the pipeline's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from ..context import RunContext
from ..model import Denoiser, Point, Threshold
from ..nodes import NodeTable
from ..noise.source import NoiseSource
from ..prepare import check_final
from ..schedules import DiscreteVP, Flow, NoiseSchedule
from ..schedules.vp import named_betas
from ..solvers import Solver, get_solver
from ..solvers.base import Steps
from ..spacing import model_times

PREDICTION_TYPES = {
    "epsilon": "epsilon",
    "sample": "sample",
    "v_prediction": "v_prediction",
    "flow_prediction": "velocity",
}


def _flow_shift(t: Tensor | float, shift: float) -> Any:
    """SD3's timestep shift ``t' = shift t / (1 + (shift - 1) t)``."""
    return shift * t / (1 + (shift - 1) * t)


def _never_called(x: Tensor, t: Tensor) -> Tensor:
    raise RuntimeError("FewstepScheduler does not call the model; the pipeline does")


class FewstepScheduler(SchedulerMixin, ConfigMixin):  # type: ignore[misc]
    """A diffusers scheduler backed by a fewstep solver (see the module docstring)."""

    order = 1
    _compatibles: list[str] = []

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
        solver: str = "dpmpp_2m",
        spacing: str = "logsnr",
        final: str = "zero",
        solver_options: dict[str, Any] | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ):
        if flow:
            if prediction_type not in ("flow_prediction", "velocity", "epsilon"):
                raise ValueError(f"prediction_type: a flow config predicts velocity, got {prediction_type!r}")
            if not shift > 0:
                raise ValueError(f"shift: must be > 0, got {shift}")
            self.schedule: NoiseSchedule = Flow(t_min=float(_flow_shift(1.0 / num_train_timesteps, shift)))
            self.prediction = "velocity"
            time_input: Any = lambda t: t * num_train_timesteps  # noqa: E731
        else:
            if prediction_type not in PREDICTION_TYPES:
                raise ValueError(
                    f"prediction_type: choose one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
                )
            betas = (
                np.asarray(trained_betas, dtype=np.float64)
                if trained_betas is not None
                else named_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
            )
            self.schedule = DiscreteVP(betas=betas, rescale_zero_terminal_snr=rescale_betas_zero_snr)
            self.prediction = PREDICTION_TYPES[prediction_type]
            time_input = "index"
        self.solver: Solver = get_solver(solver, **(solver_options or {}))
        threshold = Threshold(dynamic_thresholding_ratio, sample_max_value) if thresholding else None
        self.denoiser = Denoiser(
            _never_called, self.schedule, self.prediction, time_input=time_input, threshold=threshold
        )
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.zeros(0)
        self._points: list[Point] = []
        self._run: Steps | None = None
        self._noise = NoiseSource()
        self._step_index = 0

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As :meth:`ConfigMixin.from_config`; a ``FlowMatch*`` scheduler's config selects the flow schedule."""
        cfg = dict(config or {})
        flow_config = str(cfg.get("_class_name", "")).startswith("FlowMatch") or (
            "shift" in cfg and "beta_schedule" not in cfg and "flow" not in cfg
        )
        if flow_config and "flow" not in kwargs:
            kwargs["flow"] = True
            cfg.setdefault("prediction_type", "flow_prediction")
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def cfg(self) -> Any:
        """The registered config (attribute access)."""
        return self.config

    @property
    def step_index(self) -> int:
        return self._step_index

    def __len__(self) -> int:
        return int(self.cfg.num_train_timesteps)

    def _node_table(self, nfe: int) -> NodeTable:
        sched, cfg = self.schedule, self.cfg
        clean_end = check_final(cfg.final)
        first_infinite = float(sched.alpha(sched.t_max)) == 0.0
        steps = self.solver.steps_for_nfe(nfe, first_infinite, clean_end)
        times = model_times(sched, steps if clean_end else steps + 1, cfg.spacing, steps_offset=cfg.steps_offset)
        if cfg.flow and cfg.shift != 1.0:
            times = _flow_shift(times, cfg.shift)
        node_t = np.concatenate([times.numpy(), [math.nan]]) if clean_end else times.numpy()
        return NodeTable.build(
            self.denoiser, node_t, clean_end, batch=1, device=torch.device("cpu"), dtype=torch.float32, nfe_budget=nfe
        )

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Plan a run that spends exactly ``num_inference_steps`` model evaluations."""
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be a positive integer, got {num_inference_steps!r}")
        self._nodes = self._node_table(num_inference_steps)
        points = self._points = self._evaluation_points(self._nodes)
        times = torch.tensor([p.t for p in points], dtype=torch.float64)
        self.timesteps = torch.as_tensor(self.denoiser.time_of(times), dtype=torch.float32).to(device)
        self.num_inference_steps = num_inference_steps
        self._run, self._step_index = None, 0

    def _evaluation_points(self, nodes: NodeTable) -> list[Point]:
        """The solver's evaluation points in order, from a dry run on a scalar state."""
        points: list[Point] = []
        zero = torch.zeros(1, 1)  # a batch of one (solvers may reduce over the non-batch dimensions)

        def record(_x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
            points.append(p)
            return zero, zero

        dry_run = RunContext(nodes, NoiseSource(sampler=lambda _s, _t: zero))  # no draws from any generator
        self.solver.run(zero, nodes, dry_run, record)
        return points

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at the ``begin_index``-th evaluation (image-to-image pipelines skip the noisiest ones).

        The run is re-planned on the remaining grid nodes, at the same times; that needs a solver whose
        evaluations are its grid nodes (one evaluation per step), not a singlestep one.
        """
        if not self._points:
            raise RuntimeError("set_timesteps: call it before set_begin_index()")
        if begin_index == 0:
            return
        if self.solver.nfe_per_step != 1 or not 0 <= begin_index < len(self._points):
            raise ValueError(
                f"begin_index: {begin_index} is not a grid node of {self.solver.name!r}; starting part-way needs "
                "a solver with one evaluation per step (ddim, euler, dpmpp_2m, dpmpp_3m, ...)"
            )
        self._nodes = self._nodes.tail(begin_index)
        self._points = self._evaluation_points(self._nodes)
        self._run, self._step_index = None, 0

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The model takes ``x_t`` itself."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Feed the model output at ``sample`` to the solver; return where it wants the next evaluation.

        Stochastic solvers draw their noise with ``generator`` (the pipeline's), as diffusers' schedulers do."""
        if not self._points:
            raise RuntimeError("set_timesteps: call it before step()")
        if self._step_index >= len(self._points):
            raise RuntimeError("step: the planned evaluations are used up; call set_timesteps again")
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x = sample.to(dtype)
        if self._run is None:
            self._run = self.solver.solve(x, self._nodes, RunContext(self._nodes, self._noise))
            next(self._run)
        self._noise.generator = generator  # stochastic solvers draw their step noise from it
        x0, eps = self.denoiser.convert(
            x, model_output.to(dtype), self._points[self._step_index], self.solver.needs_eps
        )
        self._step_index += 1
        try:
            prev, _ = self._run.send((x0, eps))
        except StopIteration as done:
            prev, self._run = done.value, None
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _t_of_timestep(self, timesteps: Tensor) -> Tensor:
        ts = torch.as_tensor(timesteps, dtype=torch.float64).cpu()
        if self.cfg.flow:
            return ts / self.cfg.num_train_timesteps
        assert isinstance(self.schedule, DiscreteVP)
        return self.schedule.t_of_index(ts)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise`` at the given (pipeline) timesteps."""
        t = self._t_of_timestep(timesteps).reshape(-1)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        a = self.schedule.alpha(t).to(original_samples).reshape(shape)
        s = self.schedule.sigma(t).to(original_samples).reshape(shape)
        return a * original_samples + s * noise
