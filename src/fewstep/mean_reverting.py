"""Sampling a mean-reverting diffusion around its mean (MRS, Li et al. 2025): the solvers run on ``y = x - mu``, whose
schedule is :class:`~fewstep.schedules.MeanReverting` (see :mod:`fewstep.schedules.mean_reverting`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .sampling import sample
from .schedules import MeanReverting


def sample_mean_reverting(
    model: Any,
    mu: Tensor,
    noise: Tensor,
    schedule: MeanReverting,
    solver: Any = "dpmpp_2m",
    *,
    condition_key: str | None = None,
    **options: Any,
) -> Tensor:
    """Sample a mean-reverting diffusion towards the data from the mean ``mu`` (module docstring): ``x_T = mu +
    sigma_T noise`` (``alpha_T (x0 - mu)`` is taken as 0, as in the references), the solver runs on ``y = x - mu``
    with the network called on ``x = y + mu`` (and given ``mu`` as ``model_kwargs[condition_key]`` when a key is
    given), and the result is ``mu + y``. ``options`` go to :func:`fewstep.sample` (``nfe``, ``spacing``,
    ``prediction``, ``generator``, ``final``, ...)."""
    if not isinstance(schedule, MeanReverting):
        raise TypeError(f"schedule: need a MeanReverting schedule, got {type(schedule).__name__}")
    if not isinstance(mu, Tensor) or not isinstance(noise, Tensor) or mu.shape != noise.shape:
        raise ValueError("mu, noise: need two tensors of one shape (the mean and the standard normal noise)")

    def shifted(y: Tensor, time: Tensor, **kwargs: Any) -> Tensor:
        if condition_key is not None:
            kwargs = {**kwargs, condition_key: mu}
        return model(y + mu, time, **kwargs)

    sigma_t = float(schedule.sigma(schedule.t_max))
    return mu + sample(shifted, sigma_t * noise, schedule, solver, **options)


__all__ = ["sample_mean_reverting"]
