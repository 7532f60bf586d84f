"""Superposition (SuperDiff OR / AND) of two exact 2-D Gaussian-mixture models: measured against the exact answer.

Four modes at (-3, 0), (0, 3), (3, 0), (0, -3) with std 0.4, VP schedule, epsilon models.

- OR: model A has modes 1, 2 (weights 0.7, 0.3), model B modes 3, 4 (0.4, 0.6). With priors (pi_A, pi_B) the mixture
  puts pi_A (0.7, 0.3) and pi_B (0.4, 0.6) on the modes; each sample is assigned to its nearest mode and each mode's
  frequency is compared with its weight in standard errors ``z = (freq - w) / sqrt(w (1 - w) / n)``. The row
  ``exact`` samples that target mixture directly (one model) with the same solver and noise: the solver's own error.
- AND: model A has modes 1, 2, 4, model B modes 2, 3, 4 (equal weights; the shared modes lie on the bisector of the
  others): the fraction of samples within 4 std of a shared mode (2 or 4), and the same for the fixed average of the
  two models (``sum``, AND's weights without the density feedback).

Run: python benchmarks/superposition.py [--samples 2000] [--steps 100] [--solvers euler_ancestral ddpm ...]
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance.superposition import Superposition

MODES = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, -3.0]], dtype=torch.float64)
STD = 0.4
OR_A, OR_B = ([0, 1], [0.7, 0.3]), ([2, 3], [0.4, 0.6])
AND_A, AND_B, SHARED = [0, 1, 3], [1, 2, 3], [1, 3]  # 0-based: modes 1, 2, 4 and 2, 3, 4


def mixture(modes: list[int], weights: list[float] | None = None) -> GaussianMixture:
    return GaussianMixture(MODES[modes], STD, weights)


def or_weights(priors: tuple[float, float]) -> torch.Tensor:
    """The exact weight of each mode in the OR target."""
    pa, pb = priors[0] / sum(priors), priors[1] / sum(priors)
    return torch.tensor([pa * OR_A[1][0], pa * OR_A[1][1], pb * OR_B[1][0], pb * OR_B[1][1]], dtype=torch.float64)


def nearest(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, MODES).argmin(1)


def run(a: GaussianMixture, rule: Superposition | None, solver: str, steps: int, n: int, seed: int) -> torch.Tensor:
    """``n`` samples of a run whose network is ``a``'s model."""
    schedule = fewstep.VP()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = fewstep.sample(
        a.model(schedule, "epsilon"), noise, schedule, solver, steps=steps, guidance=rule, progress=False,
        generator=torch.Generator().manual_seed(seed + 1),
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solvers", nargs="+", default=["euler_ancestral", "ddpm", "dpmpp_2m_sde"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    vp, n = fewstep.VP(), args.samples
    print(f"{n} samples, {args.steps} steps, VP")
    for solver in args.solvers:
        for priors in ((1.0, 1.0), (0.25, 0.75)):
            want = or_weights(priors)
            rule = Superposition([None, mixture(*OR_B).model(vp, "epsilon")], "or", priors=list(priors))
            start = time.perf_counter()
            runs = {
                "OR": run(mixture(*OR_A), rule, solver, args.steps, n, args.seed),
                "exact": run(GaussianMixture(MODES, STD, want.tolist()), None, solver, args.steps, n, args.seed),
            }
            for label, out in runs.items():
                freq = torch.bincount(nearest(out), minlength=4).double() / n
                z = (freq - want) / (want * (1 - want) / n).sqrt()
                print(
                    f"{label:5s} {solver:16s} priors {priors}: freq {[round(v, 4) for v in freq.tolist()]} target "
                    f"{[round(v, 4) for v in want.tolist()]} z {[round(v, 2) for v in z.tolist()]}"
                )
        for mode in ("and", "sum"):
            rule = Superposition([None, mixture(AND_B).model(vp, "epsilon")], mode)  # type: ignore[arg-type]
            out = run(mixture(AND_A), rule, solver, args.steps, n, args.seed)
            shared = float((torch.cdist(out, MODES[SHARED]).min(1).values < 4 * STD).double().mean())
            print(f"{mode.upper():5s} {solver:16s} within 4 std of a shared mode: {shared:.4f}")
        print(f"      ({time.perf_counter() - start:.1f} s for {solver})")


if __name__ == "__main__":
    main()
