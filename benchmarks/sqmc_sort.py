"""The cost of SQMC's Hilbert sort per step as the state grows (docs/posterior.md, ``smc(..., qmc=True)``).

For B prompts of K particles of D coordinates (standard normal), the time of one
:func:`fewstep.posterior.smc.qmc.hilbert_order`: as it sorts (up to 128 coordinates coordinate-wise, above that
in the particles' leading principal coordinates, ``min(K - 1, 128)`` of them), and with the coordinate-wise sort
forced at every D (the sort before the principal coordinates). Minimum over ``--repeat`` runs, one thread.

Usage: ``python benchmarks/sqmc_sort.py [--dims 64,1024,16384] [--prompts 2] [--particles 64] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep.posterior.smc import qmc


def _time(x: torch.Tensor, repeat: int) -> float:
    qmc.hilbert_order(x)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        qmc.hilbert_order(x)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="64,1024,16384")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("| D | sort (ms) | coordinate-wise sort (ms) |")
    print("|---|---|---|")
    for d in (int(v) for v in args.dims.split(",")):
        x = torch.randn(args.prompts, args.particles, d, generator=gen)
        now = _time(x, args.repeat)
        kept = qmc.SORT_DIMS
        qmc.SORT_DIMS = d  # the coordinate-wise sort at every size
        try:
            before = _time(x, args.repeat)
        finally:
            qmc.SORT_DIMS = kept
        print(f"| {d} | {1e3 * now:.1f} | {1e3 * before:.1f} |")


if __name__ == "__main__":
    main()
