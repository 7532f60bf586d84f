"""The SMC engine against exact targets: TDS on linear-Gaussian posteriors and FK steering on a quadratic-reward tilt.

**TDS** (``fewstep.posterior.smc.TDS``) at NFE 20 per particle (the default ``dpmpp_2m_sde`` proposal, logSNR
spacing), K = 1, 4, 16, 64 particles per prompt, ``--replicates`` replicates of ``--prompts`` prompts each, on

- ``2d``: the default 2-D mixture, observing the first coordinate, ``y = 1.4``, noise 0.3;
- ``64d``: the 64-D mixture (200 modes), a random 16 x 64 Gaussian operator (entries N(0, 1/64)), noise 0.3, the
  observation made from one prior sample (its posterior keeps one mode).

The network is the differentiable exact denoiser (``as_full_covariance(mixture).model``), so the twist's gradient
goes through it; ``--jacobian-free`` takes the isotropic mixture's own denoiser, which detaches its input (the
gradient is then the conversion's explicit part only). ``--variance`` (``gaussian`` or ``tweedie``), ``--data-std``
(a number or ``none``) and ``--twist-scale`` set the twist's variance ``r_t^2`` (``TDS`` docstring; defaults as
``TDS``); ``--first-order`` takes TDS's first-order proposal shift instead of the product proposal,
``--lookahead`` the product proposal with the next node's twist instead of the current node's (``TDS``
``lookahead=True``), ``--resample-schedule constant`` the constant ESS threshold instead of the noise-aware one and
``--spacing`` another spacing of the 20 steps than smc's default ``logsnr``, and ``--qmc`` sequential quasi-Monte
Carlo (``smc(..., qmc=True)``, start states from ``rqmc_normal``: ``fewstep.posterior.smc.qmc``).

Metrics against the exact posterior (``fewstep.bench.targets.posterior.mixture_posterior``), each averaged within a
replicate, then mean ± standard error over the replicates:

- ``weight TV``: the total variation between the exact component weights and a prompt's weighted estimate
  ``sum_k w_k r(x_k)`` (``r``: the exact posterior's responsibilities), averaged over the prompts;
- ``sliced W2`` and ``MMD^2`` (``fewstep.bench.metrics``): one particle per prompt drawn by weight, the
  ``prompts`` draws against as many fresh exact samples;
- ``final ESS / K``: the effective sample size after the last node, as a fraction of K (mean over prompts).

The ``exact`` row is the same for exact posterior samples (K of them per prompt, equally weighted, for the TV; two
independent sets for sliced W2 and MMD). "3 SE": whether the K = 64 mean is within 3 combined standard errors of
the exact row (``fewstep.bench.metrics.within_spread``), per metric.

**FK steering** (``FKSteering(r, 1, kind)``) for ``r(x) = -|x|^2/2 + 2 x_1`` on the 2-D mixture: the mean reward
(weighted) for K = 1, 2, 4, 8 against plain sampling with the proposal's solver (``dpmpp_2m_sde``) at the same NFE
per particle and the exact tilt
``p(x) exp(r(x))`` (``reward_tilt``, 10^5 exact samples), and the fraction of the gap closed.

**Variance reduction** (``--variance-reduction R``, with ``--targets "" --no-fk`` to run it alone): the 2-D TDS
problem at K = 64 and NFE 20 only, for the candidate changes of the resampling (scheme, threshold, schedule), of the
proposal's twist (``lookahead``), of where the 20 steps are spent (``spacing``) and of the proposal solver, each
over ``R`` replicates of 64 prompts whose seeds differ from the acceptance table's (so that a choice made here is
judged there on fresh noise; ``--candidates a,b`` keeps only the rows whose label contains one of the words, the
default row always), with the exact row of 64 exact samples per prompt over the same number of replicates;
per row the weight TV, the mean final ESS / K, and the mean fraction of particles whose most likely exact component
has posterior weight below 0.05 (particles spent where the posterior has almost no mass).

Usage: ``python benchmarks/posterior_smc.py [--replicates 5] [--prompts 64] [--targets 2d,64d] [--nfe 20] [--no-fk]
[--jacobian-free] [--variance gaussian|tweedie] [--data-std 1|none] [--twist-scale 1] [--first-order]
[--lookahead] [--resample-schedule noise|constant] [--spacing logsnr] [--qmc] [--variance-reduction 20]
[--candidates qmc] [--threads 1]
[--out benchmarks/results/posterior_smc.md]``.
About 5 minutes on one core (``--threads 1``, the fastest for these small batches) with the defaults (the 64-D K = 64 row takes most of it; longer on a shared machine);
``--variance-reduction 20`` adds about a minute.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import fewstep
from fewstep.bench.metrics import Spread, exact_spread, mmd, sliced_wasserstein2, spread, within_spread
from fewstep.bench.posterior_compare import REWARD_Q, posterior_problem
from fewstep.bench.targets import mixture_2d, mixture_nd
from fewstep.bench.targets.posterior import FullCovarianceMixture, as_full_covariance, mixture_posterior, reward_tilt
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, FKSteering, SMCResult, driftlite, rqmc_normal, smc

F64 = torch.float64
SCHED = fewstep.VP()
PARTICLES = (1, 4, 16, 64)
LINES: list[str] = []


def emit(line: str = "") -> None:
    """Print a line and keep it for the results file."""
    print(line, flush=True)
    LINES.append(line)


def problem(
    name: str, jacobian_free: bool = False
) -> tuple[fewstep.bench.targets.GaussianMixture, Linear, Callable[..., torch.Tensor]]:
    """The prior, the measurement and the network: the differentiable exact denoiser (TDS's gradient through the
    network), or with ``jacobian_free`` the isotropic mixture's own, which detaches its input."""
    if name == "2d":
        mix = mixture_2d()
        meas = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=torch.tensor([[1.0, 0.0]], dtype=F64))
    else:
        mix = mixture_nd()
        g = torch.Generator().manual_seed(7)
        a = torch.randn(16, mix.dim, generator=g, dtype=F64) / math.sqrt(mix.dim)
        x = mix.sample(1, generator=g)
        y = x @ a.T + 0.3 * torch.randn(1, 16, generator=g, dtype=F64)
        meas = Linear(y=y, noise_std=0.3, A=a)
    model = mix.model(SCHED, "epsilon") if jacobian_free else as_full_covariance(mix).model(SCHED, "epsilon")
    return mix, meas, model


def _tv(post: FullCovarianceMixture, x: torch.Tensor, w: torch.Tensor) -> float:
    """Mean over prompts of the TV between the exact weights and ``sum_k w_k r(x_k)``; ``x`` (B, K, D), ``w`` (B, K)."""
    b, k = w.shape
    resp = post.responsibilities(x.reshape(b * k, -1)).reshape(b, k, -1)
    exact = torch.softmax(post.log_weights, 0)
    return float(((w[..., None] * resp).sum(1) - exact).abs().sum(1).mean() / 2)


def _cell(s: Spread) -> str:
    return f"{s.mean:.4f} ± {s.stderr:.4f}"


Runner = Callable[[torch.Tensor, torch.Generator, fewstep.CallCount], SMCResult]


def particle_table(
    post: FullCovarianceMixture, run: Runner, dim: int, args: argparse.Namespace, ess: bool, qmc: bool = False
) -> None:
    """The rows K = 1 .. 64 of one sampler ``run(noise, generator, calls)`` against the exact ``post``, the exact
    row and the 3-SE verdict at K = 64 (module docstring); ``ess``: add the mean final ESS / K; ``qmc``: RQMC start
    states (``rqmc_normal``)."""
    reps, prompts = args.replicates, args.prompts
    extra = " final ESS / K |" if ess else ""
    emit(f"| K | weight TV | sliced W2 | MMD^2 |{extra} network calls | backward passes | seconds |")
    emit("|---|---|---|---|" + ("---|" if ess else "") + "---|---|---|")
    rows = {}
    for k in PARTICLES:
        values, fractions = [], []
        calls = fewstep.CallCount()
        start = time.perf_counter()
        for rep in range(reps):
            g = torch.Generator().manual_seed(1000 * rep + k)
            noise = _start(prompts, k, dim, g, qmc)
            rep_calls = fewstep.CallCount()
            r = run(noise, g, rep_calls)
            calls.add(rep_calls)
            pick = torch.multinomial(r.weights, 1, generator=g)[:, 0]
            x = r.samples[torch.arange(prompts), pick].detach()
            ref = post.sample(prompts, generator=torch.Generator().manual_seed(5000 + rep))
            values.append((_tv(post, r.samples.detach(), r.weights), sliced_wasserstein2(x, ref), mmd(x, ref)))
            fractions.append(float(r.ess[-1].mean()) / k)
        seconds = time.perf_counter() - start
        rows[k] = [spread(v) for v in zip(*values, strict=True)]
        cells = " | ".join(_cell(s) for s in rows[k])
        frac = f" {sum(fractions) / len(fractions):.3f} |" if ess else ""
        emit(f"| {k} | {cells} |{frac} {calls.network // reps} | {calls.backward // reps} | {seconds:.1f} |")
    k = PARTICLES[-1]
    floor = _exact_row(post, k, prompts, reps)
    emit(f"| exact, K = {k} | {' | '.join(_cell(s) for s in floor)} |{' |' if ess else ''} 0 | 0 | |")
    names = ("weight TV", "sliced W2", "MMD^2")
    verdict = ", ".join(
        f"{n} {'yes' if within_spread(a, b) else 'no'}" for n, a, b in zip(names, rows[k], floor, strict=True)
    )
    emit(f"\nK = {k} within 3 SE of exact: {verdict}")


def tds_table(name: str, args: argparse.Namespace) -> None:
    mix, meas, model = problem(name, args.jacobian_free)
    pot = TDS(
        meas,
        twist_scale=args.twist_scale,
        data_std=args.data_std,
        variance=args.variance,
        optimal_proposal=not args.first_order,
        lookahead=args.lookahead,
    )
    twist = "Jacobian-free" if args.jacobian_free else "through the network"
    proposal = "first-order" if args.first_order else "product (lookahead)" if args.lookahead else "product"
    proposal += ", SQMC (qmc=True)" if args.qmc else ""
    emit(
        f"\n### TDS, {name}: NFE {args.nfe} per particle, {args.replicates} x {args.prompts} prompts, twist {twist}, "
        f"variance {args.variance}, data_std {args.data_std}, twist_scale {args.twist_scale}, "
        f"{proposal} proposal, {args.resample_schedule} resampling, {args.spacing} spacing\n"
    )

    def run(noise: torch.Tensor, g: torch.Generator, calls: fewstep.CallCount) -> SMCResult:
        return smc(
            model,
            noise,
            SCHED,
            pot,
            nfe=args.nfe,
            spacing=args.spacing,
            generator=g,
            calls=calls,
            resample_schedule=args.resample_schedule,
            qmc=args.qmc,
        )

    particle_table(mixture_posterior(mix, meas), run, mix.dim, args, ess=True, qmc=args.qmc)


def _start(prompts: int, k: int, dim: int, g: torch.Generator, qmc: bool) -> torch.Tensor:
    """The start states: iid normal, or (``qmc``) per-prompt RQMC normal points."""
    if qmc:
        return rqmc_normal(prompts, k, (dim,), g, F64)
    return torch.randn(prompts, k, dim, generator=g, dtype=F64)


#: the variance-reduction candidates: (label, TDS options, smc options); the first row is the default; the smc
#: option ``rqmc_start`` (not smc's: the start states from ``rqmc_normal``) defaults to ``qmc``
CANDIDATES: list[tuple[str, dict[str, object], dict[str, object]]] = [
    ("default (systematic, ESS 0.5 noise-aware, logsnr, dpmpp_2m_sde, product proposal)", {}, {}),
    ("lookahead=True (the twist of the next node)", {"lookahead": True}, {}),
    ("resample='multinomial'", {}, {"resample": "multinomial"}),
    ("resample='residual'", {}, {"resample": "residual"}),
    ("ess_threshold=0 (never resample)", {}, {"ess_threshold": 0.0}),
    ("ess_threshold=0.3", {}, {"ess_threshold": 0.3}),
    ("ess_threshold=0.8", {}, {"ess_threshold": 0.8}),
    ("ess_threshold=1 (every step)", {}, {"ess_threshold": 1.0}),
    ("resample_schedule='constant'", {}, {"resample_schedule": "constant"}),
    ("spacing='time_quadratic'", {}, {"spacing": "time_quadratic"}),
    ("spacing='time_quadratic', lookahead=True", {"lookahead": True}, {"spacing": "time_quadratic"}),
    ("spacing='time_quadratic', ess_threshold=0.3", {}, {"spacing": "time_quadratic", "ess_threshold": 0.3}),
    ("spacing='kl_optimal'", {}, {"spacing": "kl_optimal"}),
    ("spacing='karras'", {}, {"spacing": "karras"}),
    ("proposal='ddpm', spacing='time_quadratic'", {}, {"proposal": "ddpm", "spacing": "time_quadratic"}),
    ("first-order proposal (TDS as published)", {"optimal_proposal": False}, {}),
    ("qmc=True (SQMC)", {}, {"qmc": True}),
    ("qmc=True (SQMC) from iid start states", {}, {"qmc": True, "rqmc_start": False}),
    ("RQMC start states only (qmc=False)", {}, {"rqmc_start": True}),
    ("qmc=True (SQMC), ess_threshold=0 (never resample)", {}, {"qmc": True, "ess_threshold": 0.0}),
    ("qmc=True (SQMC), ess_threshold=1 (every step)", {}, {"qmc": True, "ess_threshold": 1.0}),
    ("qmc=True (SQMC), spacing='time_quadratic'", {}, {"qmc": True, "spacing": "time_quadratic"}),
    (
        "qmc=True (SQMC), spacing='time_quadratic', lookahead=True",
        {"lookahead": True},
        {"qmc": True, "spacing": "time_quadratic"},
    ),
]


def variance_table(reps: int, prompts: int, only: str = "") -> None:
    """The variance-reduction candidates on the 2-D TDS problem at K = 64, NFE 20 (module docstring); ``only``:
    comma-separated words, the rows whose label contains one (and the default row)."""
    mix, meas, model = problem("2d")
    post = mixture_posterior(mix, meas)
    exact = torch.softmax(post.log_weights, 0)
    rare = exact < 0.05
    k = PARTICLES[-1]
    emit(
        f"\n### Variance reduction, 2d: TDS at K = {k}, NFE 20 per particle, {reps} x {prompts} prompts (seeds apart "
        "from the acceptance table's)\n"
    )
    emit("| candidate | weight TV | final ESS / K | particles on modes of weight < 0.05 | seconds |")
    emit("|---|---|---|---|---|")
    words = [w for w in only.split(",") if w]
    for n, (label, tds_options, smc_options) in enumerate(CANDIDATES):
        if words and n > 0 and not any(w in label for w in words):
            continue
        pot = TDS(meas, **tds_options)  # type: ignore[arg-type]
        options = dict(smc_options)
        rqmc_start = bool(options.pop("rqmc_start", options.get("qmc", False)))
        tvs, fractions, wasted = [], [], []
        start = time.perf_counter()
        for rep in range(reps):
            g = torch.Generator().manual_seed(1000 * (rep + 100) + k)
            noise = _start(prompts, k, mix.dim, g, rqmc_start)
            r = smc(model, noise, SCHED, pot, nfe=20, generator=g, **options)  # type: ignore[arg-type]
            x = r.samples.detach()
            tvs.append(_tv(post, x, r.weights))
            fractions.append(float(r.ess[-1].mean()) / k)
            mode = post.responsibilities(x.reshape(prompts * k, -1)).argmax(1)
            wasted.append(float(rare[mode].double().mean()))
        seconds = time.perf_counter() - start
        emit(
            f"| {label} | {_cell(spread(tvs))} | {sum(fractions) / reps:.3f} | {sum(wasted) / reps:.3f} | "
            f"{seconds:.1f} |"
        )
    floor = []
    for rep in range(reps):
        xs = post.sample(prompts * k, generator=torch.Generator().manual_seed(9100 + rep))
        floor.append(_tv(post, xs.reshape(prompts, k, -1), torch.full((prompts, k), 1.0 / k, dtype=F64)))
    mode = post.responsibilities(xs).argmax(1)
    emit(f"| exact samples, {k} per prompt | {_cell(spread(floor))} | 1 | {float(rare[mode].double().mean()):.3f} | |")


def driftlite_table(name: str, drift: str, args: argparse.Namespace) -> None:
    """DriftLite on ``fewstep compare --posterior reward``'s tilt (``r(x) = -q/2 |x - c|^2``) of the 2-D / 64-D
    mixture, through the differentiable exact denoiser."""
    prob = posterior_problem("reward", name)
    assert prob.reward is not None
    reward, lam = prob.reward, prob.reward.scale
    model = as_full_covariance(prob.prior).model(SCHED, "epsilon")
    emit(
        f"\n### DriftLite, {name}, reward tilt (q = {REWARD_Q[prob.dim]}), drift {drift!r}: NFE {args.nfe} per "
        f"particle, {args.replicates} x {args.prompts} prompts\n"
    )

    def run(noise: torch.Tensor, g: torch.Generator, calls: fewstep.CallCount) -> SMCResult:
        return driftlite(model, noise, SCHED, reward, nfe=args.nfe, generator=g, lam=lam, drift=drift, calls=calls)

    particle_table(prob.exact, run, prob.dim, args, ess=True)


def _exact_row(post: FullCovarianceMixture, k: int, prompts: int, reps: int) -> list[Spread]:
    """The metrics for exact samples: K equally weighted per prompt (TV); two independent sets (sliced W2, MMD)."""
    tvs = []
    for rep in range(reps):
        xs = post.sample(prompts * k, generator=torch.Generator().manual_seed(9000 + rep))
        tvs.append(_tv(post, xs.reshape(prompts, k, -1), torch.full((prompts, k), 1.0 / k, dtype=F64)))
    return [
        spread(tvs),
        exact_spread(sliced_wasserstein2, post, prompts, reps, seed=7000),
        exact_spread(mmd, post, prompts, reps, seed=7000),
    ]


def fk_table(prompts: int) -> None:
    mix = mixture_2d()
    model = mix.model(SCHED, "epsilon")
    b_vec = torch.tensor([2.0, 0.0], dtype=F64)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum(1) + x @ b_vec.to(x)

    tilt = reward_tilt(mix, torch.eye(2, dtype=F64), b_vec, 1.0)
    exact = float(reward(tilt.sample(100_000, generator=torch.Generator().manual_seed(0))).mean())
    base = torch.randn(prompts * 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    plain_x = fewstep.sample(model, base, SCHED, "dpmpp_2m_sde", nfe=20, generator=torch.Generator().manual_seed(2))
    plain = float(reward(plain_x).mean())
    emit(f"\n### FK steering, 2d, r(x) = -|x|^2/2 + 2 x_1, NFE 20 per particle, {prompts * 4} prompts\n")
    emit(f"plain sampling (dpmpp_2m_sde, the proposal) mean reward {plain:.4f}; exact tilted mean reward {exact:.4f}\n")
    emit("| potential | K | mean reward | gap closed |")
    emit("|---|---|---|---|")
    for kind in ("difference", "max", "sum"):
        for k in (1, 2, 4, 8):
            noise = torch.randn(prompts * 4, k, 2, generator=torch.Generator().manual_seed(3 + k), dtype=F64)
            r = smc(
                model, noise, SCHED, FKSteering(reward, 1.0, kind), nfe=20, generator=torch.Generator().manual_seed(k)
            )
            steered = float(r.expectation(reward(r.samples.reshape(-1, 2)).reshape(-1, k)).mean())
            emit(f"| {kind} | {k} | {steered:.4f} | {(steered - plain) / (exact - plain):.3f} |")


def _data_std(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--targets", default="2d,64d")
    parser.add_argument("--nfe", type=int, default=20, help="network calls per particle of the TDS runs")
    parser.add_argument("--no-fk", action="store_true", help="leave the FK steering table out")
    parser.add_argument("--jacobian-free", action="store_true", help="the mixture's own (detaching) denoiser")
    parser.add_argument("--data-std", type=_data_std, default=1.0, help="TDS data_std (a number or none)")
    parser.add_argument("--twist-scale", type=float, default=1.0, help="TDS twist_scale")
    parser.add_argument("--variance", default="gaussian", help="TDS variance: gaussian (default) or tweedie")
    parser.add_argument("--first-order", action="store_true", help="TDS's first-order proposal shift")
    parser.add_argument("--resample-schedule", default="noise", help="smc's resample_schedule: noise or constant")
    parser.add_argument("--lookahead", action="store_true", help="TDS lookahead=True")
    parser.add_argument("--spacing", default="logsnr", help="smc's spacing of the steps (default logsnr)")
    parser.add_argument("--qmc", action="store_true", help="smc qmc=True (SQMC) with RQMC start states")
    parser.add_argument("--variance-reduction", type=int, default=0, help="replicates of the variance table (0: off)")
    parser.add_argument("--candidates", default="", help="variance table: only rows containing one of these words")
    parser.add_argument("--driftlite", default="", help="DriftLite tables on these targets (e.g. 2d,64d)")
    parser.add_argument("--drifts", default="none,guidance,vcg", help="DriftLite's drifts to tabulate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small batches: 1 is fastest)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))
    for name in filter(None, args.targets.split(",")):
        tds_table(name, args)
    if not args.no_fk:
        fk_table(args.prompts)
    if args.variance_reduction > 0:
        variance_table(args.variance_reduction, args.prompts, args.candidates)
    for name in filter(None, args.driftlite.split(",")):
        for drift in filter(None, args.drifts.split(",")):
            driftlite_table(name, drift, args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
