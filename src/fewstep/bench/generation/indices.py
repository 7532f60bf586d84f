"""Index ranges: a run's ``n`` samples in fixed shards, and which shards each rank generates.

Shard ``k`` holds the indices ``[k * shard_size, min((k + 1) * shard_size, n))``; its batches are consecutive runs of
``batch`` indices inside it. Neither depends on the world size, so a sample is computed in the same batch whatever
the number of processes (bit-identical output), and a rerun with another world size resumes the same shards.
Ranks take shards ``interleaved`` (shard ``k`` to rank ``k mod W``: the same load whatever ``n``) or ``blocked``
(contiguous runs of shards, as even as possible).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAYOUTS", "Shard", "make_shards", "assign", "batches", "index_ranges"]

#: How ranks take shards.
LAYOUTS = ("interleaved", "blocked")


@dataclass(frozen=True)
class Shard:
    """Shard ``number`` of a run: the sample indices ``range(start, stop)``."""

    number: int
    start: int
    stop: int

    @property
    def indices(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


def make_shards(n: int, shard_size: int) -> list[Shard]:
    """The shards of ``n`` samples, ``shard_size`` indices each (the last one shorter)."""
    return [Shard(k, start, min(start + shard_size, n)) for k, start in enumerate(range(0, n, shard_size))]


def assign(shards: list[Shard], rank: int, world_size: int, layout: str = "interleaved") -> list[Shard]:
    """The shards that ``rank`` of ``world_size`` generates (module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: choose one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in [0, {world_size}), got {rank}")
    if layout == "interleaved":
        return shards[rank::world_size]
    per, extra = divmod(len(shards), world_size)
    first = rank * per + min(rank, extra)
    return shards[first : first + per + (rank < extra)]


def batches(shard: Shard, batch: int) -> list[range]:
    """The batches of ``shard``: consecutive runs of ``batch`` indices (the last one shorter)."""
    return [range(i, min(i + batch, shard.stop)) for i in range(shard.start, shard.stop, batch)]


def index_ranges(shards: list[Shard]) -> list[list[int]]:
    """``shards`` as maximal ``[start, stop)`` index ranges."""
    out: list[list[int]] = []
    for s in shards:
        if out and out[-1][1] == s.start:
            out[-1][1] = s.stop
        else:
            out.append([s.start, s.stop])
    return out
