"""The cost of reproducible noise: ``seed=`` against ``generator=`` and against Brownian paths (fewstep's and torchsde's).

Two tables, one run, on the CPU:

1. **Sampling runs.** ``fewstep.sample(..., "dpmpp_2m_sde")`` on DDPM's linear discrete schedule with an exact,
   one-operation model (standard normal data: ``eps_hat = sigma x``, so the noise is most of the work), for
   4x4x64x64 over 50 steps and 16x4x64x64 over 20 steps, with the step noise from

   - ``generator=``: one ``torch.randn`` of the batch per step (not per-sample reproducible);
   - ``seed=``: per-sample generator streams (:class:`fewstep.noise.SeededNoise`);
   - ``fewstep tree``: ``noise_sampler=brownian_level_sampler(...)``, one :class:`fewstep.noise.BrownianPath` per
     sample in the schedule's time (the same path at every step count);
   - ``torchsde interval``: the same query through ``torchsde.BrownianInterval`` (one per sample, as k-diffusion's
     ``BrownianTreeNoiseSampler`` does with a list of seeds; its defaults), when torchsde is installed.

   Time is the median of ``--repeats`` runs; peak memory is the most CPU memory allocated and not yet freed during a
   run, from the torch profiler's memory events, as MiB and as copies of the state.

2. **Brownian queries alone.** The increments of 50 equal steps (4x4x64x64) asked of fewstep's
   ``BrownianPath`` and of torchsde's ``BrownianInterval`` with the same tolerance and the space-time Levy area
   (torchsde: ``halfway_tree=True``, which makes it a tree with that tolerance), at the tolerance of
   ``brownian_level_sampler`` (2^-12 of the interval) and at the default 1e-6.

Usage: ``python benchmarks/noise.py [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import fewstep
from fewstep.bench.memory import peak_allocated_bytes
from fewstep.noise import BrownianPath
from fewstep.noise.levels import TOL_FRACTION, brownian_level_sampler

try:
    import torchsde
except ImportError:  # the torchsde rows are left out
    torchsde = None

SCHEDULE = fewstep.DiscreteVP.linear()
CASES = [((4, 4, 64, 64), 50), ((16, 4, 64, 64), 20)]


def model(x: Tensor, t: Tensor) -> Tensor:
    """The exact noise prediction of standard normal data on a VP schedule: ``eps_hat = sigma_t x``."""
    return x * SCHEDULE.sigma(t.reshape(-1, *([1] * (x.ndim - 1)))).to(x.dtype)


def torchsde_sampler(like: Tensor, seeds: list[int], **options: Any) -> Callable[[float, float], Tensor]:
    """k-diffusion's per-sample ``BrownianTreeNoiseSampler`` pattern on torchsde's interval, in the schedule's time."""
    assert torchsde is not None
    t0, t1 = min(0.0, float(SCHEDULE.t_min)), float(SCHEDULE.t_max)
    paths = [
        torchsde.BrownianInterval(t0=t0, t1=t1, size=like.shape[1:], dtype=like.dtype, entropy=s, **options)
        for s in seeds
    ]

    def time_of(level: float) -> float:
        return t0 if level <= 0 else t1 if math.isinf(level) else min(max(float(SCHEDULE.t_of_level(level)), t0), t1)

    def noise(s: float, t: float) -> Tensor:
        a, b = sorted((time_of(s), time_of(t)))
        return torch.stack([p(a, b) for p in paths]) / math.sqrt(b - a)

    return noise


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def noise_runs(noise: Tensor, seeds: list[int], steps: int) -> dict[str, Callable[[], Tensor]]:
    """One dpmpp_2m_sde run per noise source, from ``noise``."""

    def run(**kw: Any) -> Tensor:
        return fewstep.sample(model, noise, SCHEDULE, "dpmpp_2m_sde", nfe=steps, **kw)

    runs: dict[str, Callable[[], Tensor]] = {
        "generator=": lambda: run(generator=torch.Generator().manual_seed(1)),
        "seed=": lambda: run(seed=seeds),
        "fewstep tree": lambda: run(noise_sampler=brownian_level_sampler(SCHEDULE, noise, seeds)),
    }
    if torchsde is not None:
        runs["torchsde interval"] = lambda: run(noise_sampler=torchsde_sampler(noise, seeds))
    return runs


def sampling_table(repeats: int) -> None:
    print("1. dpmpp_2m_sde runs (time: median of runs; memory: peak allocated during a run)\n")
    print(f"{'state':>14} {'steps':>5}  {'noise':<18} {'time s':>8} {'x gen':>6} {'peak MiB':>9} {'states':>7}")
    for shape, steps in CASES:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        seeds = list(range(shape[0]))
        state_bytes = noise.numel() * noise.element_size()
        runs = noise_runs(noise, seeds, steps)
        base = None
        for name, run in runs.items():
            seconds = timed(run, repeats)
            base = base or seconds
            peak = peak_allocated_bytes(run)
            state = "x".join(map(str, shape))
            print(
                f"{state:>14} {steps:>5}  {name:<18} {seconds:>8.3f} {seconds / base:>6.2f} "
                f"{peak / 2**20:>9.1f} {peak / state_bytes:>7.1f}"
            )
    print()


def query_table(repeats: int) -> None:
    print("2. 50 Brownian increments of a 4x4x64x64 path alone (space-time Levy area, same tolerance)\n")
    shape, steps = CASES[0]
    t0, t1 = min(0.0, float(SCHEDULE.t_min)), float(SCHEDULE.t_max)
    # 50 equal steps down the interval, (earlier, later) time (torchsde's halfway tree recurses without end on some
    # of the run's own log-SNR times, so both paths get the same uniform ones)
    times = [t1 - (t1 - t0) * k / steps for k in range(steps + 1)]
    pairs = list(zip(times[1:], times[:-1], strict=True))
    seeds = list(range(shape[0]))
    print(f"{'tol':>10}  {'path':<20} {'time s':>8}")
    for tol in (TOL_FRACTION * (t1 - t0), 1e-6 * (t1 - t0)):

        def ours(tol: float = tol) -> None:
            path = BrownianPath(shape[1:], seeds, t0, t1, tol=tol)
            for a, b in pairs:
                path.increment(a, b, levy_area=True)

        rows = {"fewstep BrownianPath": ours}
        if torchsde is not None:

            def theirs(tol: float = tol) -> None:
                paths = [
                    torchsde.BrownianInterval(
                        t0=t0,
                        t1=t1,
                        size=shape[1:],
                        entropy=s,
                        tol=tol,
                        halfway_tree=True,
                        levy_area_approximation="space-time",
                    )
                    for s in seeds
                ]
                for a, b in pairs:
                    for p in paths:
                        p(a, b, return_U=True)

            rows["torchsde interval"] = theirs
        for name, fn in rows.items():
            print(f"{tol:>10.3g}  {name:<20} {timed(fn, repeats):>8.3f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    sampling_table(args.repeats)
    query_table(args.repeats)


if __name__ == "__main__":
    main()
