"""Posterior samplers against the exact posterior: metric against particles, and FK steering's reward-gap closure.

For each problem of ``fewstep compare --posterior`` (:mod:`fewstep.bench.posterior_compare`: ``inpaint``,
``linear``, ``reward``) on the 2-D and 64-D mixtures, every available method runs at NFE ``--nfe`` per chain
(per particle), the particle methods (TDS, FK steering: :mod:`fewstep.posterior.smc`, found by import) at K = 1, 4,
16, 64 particles per sample, over ``--replicates`` replicates of ``--samples`` samples (one particle per sample,
drawn by weight). Metrics against the exact posterior (or tilt): the component-weight error (L1, by
responsibility), sliced W2 and MMD^2 to fresh exact samples of the same size; mean ± standard error over the
replicates. The ``exact`` row is the same comparison for exact samples: the floor. ``3 SE`` says whether the
particle methods' largest K is within 3 combined standard errors of it (weight L1 and sliced W2).

The reward problem also gets the gap closure of FK steering at K = 4: ``(mean r(FK) - mean r(plain)) / (mean
r(exact tilt) - mean r(plain))`` at equal NFE per particle, and, as a reference, that of the best of 4 independent
exact prior samples (what choosing among 4 particles by their final reward alone could give).

Usage: ``python benchmarks/posterior.py [--targets 2d,64d] [--problems inpaint,linear,reward] [--replicates 5]
[--samples 256] [--particles 1,4,16,64] [--nfe 20] [--methods prior,fk_gradient] [--fk-gradient-scale 1]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep.bench import posterior_compare as pc
from fewstep.bench.metrics import Spread, within_spread


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _cell(s: Spread) -> str:
    return f"{s.mean:.4f} ± {s.stderr:.4f}"


def table(kind: str, target: str, args: argparse.Namespace) -> None:
    problem = pc.posterior_problem(kind, target, args.seed)
    methods = [m for m in pc.available_methods(kind) if args.methods is None or m in args.methods.split(",")]
    start = time.perf_counter()
    rows, exact = pc.compare_posterior(
        problem, methods, args.particles, args.nfe, args.samples, args.replicates, args.seed
    )
    seconds = time.perf_counter() - start
    reward = f"mean {problem.score_name}"
    print(f"\n### {kind}, {target} (D = {problem.dim}), NFE {args.nfe} per chain, {args.replicates} x {args.samples}")
    print(f"\nmethods: {', '.join(methods)}; {seconds:.0f} s\n")
    print(f"| method | K | NFE | weight L1 | sliced W2 | MMD^2 | {reward} | 3 SE |")
    print("|---|---|---|---|---|---|---|---|")
    top = {r.method: max(q.particles for q in rows if q.method == r.method) for r in rows}
    for r in [*rows, exact]:
        flag = ""
        if r.method != "exact" and pc.METHODS[r.method].particles and r.particles == top[r.method]:
            ok = within_spread(r.weight_l1, exact.weight_l1) and within_spread(r.sw2, exact.sw2)
            flag = "yes" if ok else "no"
        cells = (_cell(r.weight_l1), _cell(r.sw2), _cell(r.mmd), _cell(r.reward))
        print(f"| {r.method} | {r.particles} | {r.nfe} | {' | '.join(cells)} | {flag} |")
    if kind == "reward":
        plain = next(r for r in rows if r.method == "prior")
        chain = next((r for r in rows if r.method == "fk_steering" and r.particles == 1), None)
        steered = next((r for r in rows if r.method == "fk_steering" and r.particles == 4), None)
        guided = next((r for r in rows if r.method == "fk_gradient" and r.particles == 4), None)
        if guided is not None:
            closed = (guided.reward.mean - plain.reward.mean) / (exact.reward.mean - plain.reward.mean)
            print(
                f"\nFK steering with the gradient proposal, K = 4: closes {closed:.0%} of the reward gap from plain "
                f"ddpm sampling ({plain.reward.mean:.3f} -> {guided.reward.mean:.3f}, exact {exact.reward.mean:.3f})"
            )
        if steered is not None:
            for name, base in (("plain ddpm sampling", plain), ("the K = 1 chain (unweighted)", chain)):
                if base is None:
                    continue
                closed = (steered.reward.mean - base.reward.mean) / (exact.reward.mean - base.reward.mean)
                print(
                    f"\nFK steering, K = 4: closes {closed:.0%} of the reward gap from {name} "
                    f"({base.reward.mean:.3f} -> {steered.reward.mean:.3f}, exact {exact.reward.mean:.3f})"
                )
            # a reference for K = 4 without the reward's gradient: the best of 4 independent exact prior samples
            assert problem.reward is not None
            draws = problem.prior.sample(4 * 2**16, torch.Generator().manual_seed(args.seed + 7))
            best = float(problem.reward(draws).reshape(-1, 4).amax(1).mean())
            closed = (best - plain.reward.mean) / (exact.reward.mean - plain.reward.mean)
            print(
                f"the best of 4 exact prior samples (a reference, not FK steering): mean reward {best:.3f}, "
                f"{closed:.0%} of the gap from plain ddpm sampling"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="2d,64d")
    parser.add_argument("--problems", default=",".join(pc.PROBLEMS))
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--particles", type=_ints, default=(1, 4, 16, 64))
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None, help="only these methods (default: every available one)")
    parser.add_argument("--fk-gradient-scale", type=float, default=1.0, help="fk_gradient's gradient_scale")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pc.FK_GRADIENT_SCALE = args.fk_gradient_scale
    for target in args.targets.split(","):
        for kind in args.problems.split(","):
            table(kind, target, args)


if __name__ == "__main__":
    main()
