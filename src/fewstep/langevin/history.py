"""The recent states of a batch of chains, from which the structured SG-MCMC samplers draw the other groups'
values (Alexos, Boyd & Mandt 2022): a ring buffer of the last ``size`` states ``[chains, d]`` (memory
``size x chains x d``); until it fills, the states so far are drawn from."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["StateHistory"]


class StateHistory:
    """The last ``size`` states of the chains, starting with ``first`` (``[chains, d]``)."""

    def __init__(self, first: Tensor, size: int, generator: torch.Generator | None) -> None:
        self.ring = first.new_empty(size, *first.shape)
        self.ring[0] = first
        self.size, self.count = size, 1
        self.generator = generator
        self._draw_device = generator.device if generator is not None else first.device
        self._rows = torch.arange(first.shape[0], device=first.device)

    def push(self, state: Tensor) -> None:
        """Append ``state`` (overwriting the oldest once full)."""
        self.ring[self.count % self.size] = state
        self.count += 1

    def pick(self, shape: tuple[int, ...]) -> Tensor:
        """Uniform indices of stored states, ``shape`` (drawn on the generator's device, moved to the states')."""
        filled = min(self.count, self.size)
        idx = torch.randint(filled, shape, generator=self.generator, device=self._draw_device)
        return idx.to(self.ring.device)

    def per_group(self, groups: int) -> Tensor:
        """An earlier state for every group and chain, ``[groups, chains, d]`` (drawn independently)."""
        return self.ring[self.pick((groups, self._rows.numel())), self._rows[None, :]]

    def per_coordinate(self, owner: Tensor, groups: int) -> Tensor:
        """One state ``[chains, d]`` whose group-``g`` coordinates come from an earlier state drawn for group ``g``
        and chain (``owner``: the group of each coordinate, ``[d]``)."""
        pick = self.pick((self._rows.numel(), groups))[:, owner]  # [chains, d]
        return self.ring.gather(0, pick[None]).squeeze(0)
