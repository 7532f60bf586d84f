"""``NoiseSource``: the one place a run's stochastic steps get their standard normal noise from.

Built from the run's options (:meth:`NoiseSource.of`): a ``torch.Generator`` (``torch.randn``, drawn on the
generator's device), a ``noise_sampler(level_s, level_t)`` (k-diffusion's convention, e.g. a Brownian path's
normalised increment or :class:`~fewstep.noise.ColoredNoise`), or per-sample ``seed``\\ s (one generator stream
per sample, :class:`~fewstep.noise.SeededNoise`). With none of them it draws from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..finite import all_finite
from .streams import SeededNoise

Sampler = Callable[[float, float], Tensor]


class NoiseSource:
    """``draw(level_s, level_t, like)``: the standard normal noise of a step between two noise levels."""

    def __init__(self, generator: torch.Generator | None = None, sampler: Sampler | None = None):
        if generator is not None and sampler is not None:
            raise ValueError("generator, noise_sampler: give one of them, not both (the noise sampler draws the noise)")
        self.generator, self.sampler = generator, sampler

    @classmethod
    def of(
        cls,
        generator: object = None,
        noise_sampler: object = None,
        seed: int | Sequence[int] | Tensor | None = None,
        *,
        like: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> NoiseSource:
        """The source of the options ``generator``, ``noise_sampler`` and ``seed`` (at most one; TypeError or
        ValueError naming the option otherwise). ``seed`` needs the run's start ``like`` and ``dtype``."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: must be a torch.Generator, got {type(generator).__name__}")
        if noise_sampler is not None and not callable(noise_sampler):
            raise TypeError(
                f"noise_sampler: must be callable as noise_sampler(level_s, level_t), got {noise_sampler!r}"
            )
        if generator is not None and noise_sampler is not None:
            raise ValueError("generator, noise_sampler: give one of them, not both (the noise sampler draws the noise)")
        if seed is not None and (generator is not None or noise_sampler is not None):
            raise ValueError("seed, generator, noise_sampler: give one of them, not several (each sets the noise)")
        if seed is not None:
            assert like is not None and dtype is not None
            return cls(sampler=SeededNoise(like, seed, dtype))
        return cls(generator, noise_sampler)  # type: ignore[arg-type]

    def draw(self, s: float, t: float, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like`` (on its device and dtype) for the step between the noise levels
        ``s`` and ``t`` (the schedule's level: sigma/alpha, or t for flows; 0 at the clean end)."""
        if isinstance(self.sampler, SeededNoise):  # shaped, placed and finite by construction
            return self.sampler(s, t)
        if self.sampler is not None:
            z = self.sampler(float(s), float(t))
            if not isinstance(z, Tensor) or z.shape != like.shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"noise_sampler: must return a tensor of shape {tuple(like.shape)}, got {got}")
            if z.is_cpu and not all_finite(z):  # accelerators: the run's result check catches it, without a sync
                raise ValueError(f"noise_sampler: returned NaN or inf for the levels ({s:.6g}, {t:.6g})")
            return z.to(device=like.device, dtype=like.dtype)
        g = self.generator
        z = torch.randn(like.shape, generator=g, device=g.device if g is not None else like.device, dtype=like.dtype)
        return z.to(like.device)

    @property
    def kind(self) -> str:
        """``"streams"`` (per-sample seeds), ``"sampler"`` (a noise sampler) or ``"generator"`` (a generator, or
        torch's global one)."""
        if isinstance(self.sampler, SeededNoise):
            return "streams"
        return "sampler" if self.sampler is not None else "generator"

    def position(self, like: Tensor) -> Any:
        """Where the draws stand, for :meth:`restore`: the per-sample streams' states, a generator's state (the
        given one, else the global generator of ``like``'s device), or a noise sampler's ``state()`` (None for a
        sampler without one, which must then be a pure function of the levels, as Brownian paths are)."""
        if isinstance(self.sampler, SeededNoise):
            return self.sampler.state()
        if self.sampler is not None:
            state = getattr(self.sampler, "state", None)
            return state() if callable(state) else None
        return self._generator(like).get_state()

    def restore(self, position: Any, like: Tensor) -> None:
        """Continue the draws from a :meth:`position` of the same kind of source."""
        if isinstance(self.sampler, SeededNoise):
            self.sampler.restore(position)
        elif self.sampler is not None:
            restore = getattr(self.sampler, "restore", None)
            if position is not None and callable(restore):
                restore(position)
        else:
            self._generator(like).set_state(position)

    def _generator(self, like: Tensor) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        if like.device.type == "cpu":
            return torch.default_generator
        if like.device.type == "cuda":
            index = like.device.index
            return torch.cuda.default_generators[index if index is not None else torch.cuda.current_device()]
        raise ValueError(
            f"generator: a run on {like.device.type} saves its noise position from an explicit generator= or seed="
        )
