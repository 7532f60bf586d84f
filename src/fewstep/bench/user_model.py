"""``fewstep compare --model``: compare the solvers on the user's own network, against a tight solve of it.

``--model module:function`` names an importable function returning a :class:`UserModel` (or the tuple ``(model,
schedule, prediction, shape)``): the network ``model(x, t)``, its :class:`~fewstep.NoiseSchedule`, what it predicts
and the per-sample shape of its input. ``--model DIRECTORY`` loads an unconditional diffusers pipeline saved with
``save_pretrained`` (a ``model_index.json`` with a ``unet`` or ``transformer`` and a ``scheduler``), whose schedule,
prediction and time input come from its scheduler config as :class:`~fewstep.integrations.diffusers.FewstepScheduler`
reads them.

There is no closed form for such a model, so each ODE solver's error is its RMSE against a teacher: the same network
solved from the same noise with DPM-Solver-3 on ``teacher_steps`` logSNR steps (``3 x teacher_steps`` evaluations;
its cost is reported). Every row also has its wall-clock time, split into the time inside the model-call stack and
the solver's own (as ``fewstep compare --wall-clock`` does for the built-in targets).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..schedules import DiscreteVP, NoiseSchedule
from ..solvers import available
from .compare import Row, _feasible_nfe, timed
from .metrics import rmse

__all__ = ["UserModel", "compare_model", "load_model"]


@dataclass
class UserModel:
    """A network to compare the solvers on or to sample from: ``model(x, t, **kwargs)`` predicting ``prediction``
    under ``schedule``, with inputs of per-sample ``shape``; ``time_input`` as :class:`fewstep.Denoiser`'s.

    For ``fewstep generate``: ``conditioning(indices)`` returns the model's keyword arguments for the samples of
    a 1-D int64 tensor of indices (class labels, prompt embeddings; batched along dim 0), and ``unconditional``
    those of the unconditional branch of classifier-free guidance in the same way (e.g. the null label);
    ``data_range`` is the range of the data the model generates, which PNG output maps to 0-255.
    """

    model: Callable[..., Tensor]
    schedule: NoiseSchedule
    prediction: str
    shape: tuple[int, ...]
    time_input: str | Callable[[Tensor], Tensor] = "auto"
    name: str = "model"
    conditioning: Callable[[Tensor], Mapping[str, Any]] | None = None
    unconditional: Callable[[Tensor], Mapping[str, Any]] | None = None
    data_range: tuple[float, float] = (-1.0, 1.0)


def load_model(spec: str) -> UserModel:
    """The :class:`UserModel` of ``module:function`` or of a diffusers pipeline directory (module docstring)."""
    path = Path(spec)
    if path.is_dir():
        return _pipeline_directory(path)
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"model: give module:function or a diffusers pipeline directory, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    function = getattr(importlib.import_module(module_name), function_name)
    made = function()
    if isinstance(made, UserModel):
        return made
    if isinstance(made, tuple) and len(made) == 4:
        model, schedule, prediction, shape = made
        return UserModel(model, schedule, prediction, tuple(shape), name=spec)
    raise TypeError(f"model: {spec} must return a UserModel or (model, schedule, prediction, shape)")


def _pipeline_directory(path: Path) -> UserModel:
    index = path / "model_index.json"
    if not index.exists():
        raise ValueError(f"model: {path} has no model_index.json (save a pipeline with save_pretrained)")
    from diffusers import DiffusionPipeline

    from ..integrations.diffusers import FewstepScheduler

    pipe = DiffusionPipeline.from_pretrained(str(path))
    network = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if network is None:
        raise ValueError(f"model: the pipeline in {path} has no unet or transformer")
    scheduler = FewstepScheduler.from_config(pipe.scheduler.config)
    schedule, prediction = scheduler.schedule, scheduler.prediction
    n_train = int(scheduler.config.num_train_timesteps)
    time_input: Any = "index" if isinstance(schedule, DiscreteVP) else (lambda t: t * n_train)
    config = network.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    shape = (int(config.in_channels), int(size), int(size))
    network.eval()

    def model(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return network(x.to(network.dtype), t).sample

    return UserModel(model, schedule, prediction, shape, time_input, name=json.loads(index.read_text())["_class_name"])


def compare_model(
    user: UserModel,
    solvers: Sequence[str],
    nfes: Sequence[int],
    *,
    spacing: str = "logsnr",
    samples: int = 16,
    seed: int = 0,
    teacher_steps: int = 300,
) -> tuple[list[Row], dict[str, Any]]:
    """The ODE solvers' RMSE against the teacher on ``user``'s network, from the same noise, and the teacher's cost."""
    from ..model import CallCount, Denoiser
    from ..sampling import sample

    denoiser = Denoiser(user.model, user.schedule, user.prediction, time_input=user.time_input)
    gen = torch.Generator().manual_seed(seed)
    sigma_max = float(user.schedule.sigma(user.schedule.t_max))
    noise = torch.randn(samples, *user.shape, generator=gen) * sigma_max
    calls = CallCount()
    start = time.perf_counter()
    teacher = sample(denoiser, noise, solver="dpm_solver_3", steps=teacher_steps, spacing="logsnr", calls=calls)
    cost = {"teacher": f"dpm_solver_3, {teacher_steps} logSNR steps", "teacher_nfe": calls.nfe}
    cost["teacher_seconds"] = round(time.perf_counter() - start, 3)
    stochastic = {i.name for i in available() if i.stochastic}
    rows = []
    for name in solvers:
        if name in stochastic:
            continue  # an error against one teacher path is not a measure of a stochastic sampler
        for asked in nfes:
            nfe = _feasible_nfe(name, asked, user.schedule, True)
            if nfe is None:
                rows.append(Row(name, asked, None, math.nan))
                continue
            row = Row(name, asked, nfe, math.nan)  # its seconds split into model and solver time, as the targets'

            def run(wrappers: list[Any], solver: str = name, n: int = nfe) -> Tensor:
                return sample(denoiser, noise, solver=solver, nfe=n, spacing=spacing, wrappers=wrappers)

            x = timed(row, run)
            row.rmse = rmse(x, teacher)
            row.nonfinite = not math.isfinite(row.rmse)
            rows.append(row)
    return rows, cost
