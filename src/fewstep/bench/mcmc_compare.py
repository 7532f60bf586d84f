"""Langevin samplers side by side on a target with known answers (``fewstep mcmc``, ``benchmarks/langevin.py``).

Every sampler starts from the same points and is measured the same way: ESS (bulk and tail, the smallest over the
coordinates, all chains together) per gradient evaluation (of one chain: the ESS over chains x gradient evaluations
per chain, warm-up included), the largest split R-hat, the acceptance, the
error of the mean and variance in units of the exact (or reference) moments, and, where exact samples exist, the
sliced W2 distance and the MMD to as many exact samples (:mod:`fewstep.bench.metrics`). blackjax's NUTS and MALA
(:mod:`fewstep.bench.mcmc_peers`) run in the same comparison when it is installed.

With ``match_budget`` the fewstep samplers get NUTS's gradient budget: their number of draws is chosen (from the
cost per warm-up iteration and per draw, measured on two short pilot runs) so that the whole run, warm-up
included, spends as many gradient evaluations per chain as NUTS did.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..langevin import SAMPLERS, Chains, sample
from ..langevin.diagnostics import summary
from ..options import suggestion
from .metrics import mmd, sliced_wasserstein2
from .targets.densities import DensityTarget

__all__ = ["McmcRow", "compare_samplers", "markdown_table", "measure"]

MAX_METRIC_POINTS = 2000  # draws (thinned evenly) and exact samples compared by sliced W2 and MMD
PILOT = 10  # warm-up iterations and draws of the pilot runs that measure a sampler's cost
#: the options of a settled warm-up (fewstep.langevin.settle), and its cap: this share of NUTS's gradient budget
SETTLE_OPTIONS = ("warmup_tolerance", "max_warmup")
SETTLED_WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class McmcRow:
    """One sampler's run on one target (module docstring); the ``*_error`` fields are None without reference
    moments, ``sliced_w2`` and ``mmd`` None without exact samples; ``diverged_chains``: chains with a non-finite
    draw; ``rejected_steps``: unadjusted steps the kinetic samplers' guard rejected (all chains; None for the
    others, :mod:`fewstep.langevin.backoff`)."""

    target: str
    sampler: str
    chains: int
    draws: int
    warmup: int
    gradient_evaluations: int
    acceptance: float | None
    ess_bulk: float
    ess_tail: float
    ess_bulk_per_gradient: float
    ess_tail_per_gradient: float
    split_rhat: float
    diverged_chains: int
    mean_error: float | None
    variance_error: float | None
    sliced_w2: float | None
    mmd: float | None
    seconds: float
    rejected_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(target: DensityTarget, chains: Chains, seconds: float, seed: int = 0) -> McmcRow:
    """The row of :class:`McmcRow` for ``chains`` drawn from ``target``."""
    s = summary(chains.draws)
    grads = max(int(chains.gradient_evaluations), 1)
    mean_error = variance_error = w2 = discrepancy = None
    moments = target.moments()
    if moments is not None:
        sd = moments.variance.sqrt()
        mean_error = float(((s.mean - moments.mean).abs() / sd).max())
        variance_error = float((s.sd.square() / moments.variance - 1.0).abs().max())
    if target.has_exact_samples:
        pooled = chains.draws.reshape(-1, chains.dims).double().cpu()
        thin = max(1, math.ceil(pooled.shape[0] / MAX_METRIC_POINTS))
        points = pooled[thin - 1 :: thin]
        if bool(torch.isfinite(points).all()):
            exact = target.sample(points.shape[0], torch.Generator().manual_seed(seed + 7919))
            w2, discrepancy = sliced_wasserstein2(points, exact), mmd(points, exact)
        else:  # a diverged chain
            w2 = discrepancy = math.inf
    acceptance = None if chains.acceptance is None else float(chains.acceptance.double().mean())
    return McmcRow(
        target=target.name,
        sampler=chains.sampler,
        chains=chains.num_chains,
        draws=chains.num_draws,
        warmup=chains.warmup,
        gradient_evaluations=grads,
        acceptance=acceptance,
        ess_bulk=s.min_ess_bulk,
        ess_tail=s.min_ess_tail,
        ess_bulk_per_gradient=s.min_ess_bulk / (grads * chains.num_chains),
        ess_tail_per_gradient=s.min_ess_tail / (grads * chains.num_chains),
        split_rhat=s.max_rhat,
        diverged_chains=int((~torch.isfinite(chains.draws).flatten(1).all(dim=1)).sum()),
        mean_error=mean_error,
        variance_error=variance_error,
        sliced_w2=w2,
        mmd=discrepancy,
        seconds=seconds,
        rejected_steps=None if chains.divergences is None else int(chains.divergences.sum()),
    )


Options = Mapping[str, Any]


def _run(
    target: DensityTarget, name: str, x0: torch.Tensor, draws: int, warmup: int, seed: int, options: Options | None
) -> Chains:
    generator = torch.Generator().manual_seed(seed)
    return sample(target.target(), name, x0, draws=draws, warmup=warmup, generator=generator, **(options or {}))


def _draws_for_budget(
    target: DensityTarget,
    name: str,
    x0: torch.Tensor,
    warmup: int,
    budget: int,
    seed: int,
    options: Options | None = None,
) -> int:
    """Draws that make ``name``'s run (``warmup`` included) spend ``budget`` gradient evaluations per chain."""
    base = _run(target, name, x0, PILOT, PILOT, seed, options).gradient_evaluations
    per_warm = (_run(target, name, x0, PILOT, 2 * PILOT, seed, options).gradient_evaluations - base) / PILOT
    per_draw = (_run(target, name, x0, 2 * PILOT, PILOT, seed, options).gradient_evaluations - base) / PILOT
    fixed = base - PILOT * (per_warm + per_draw)
    return max(PILOT, int((budget - fixed - warmup * per_warm) / max(per_draw, 1e-12)))


def check_samplers(samplers: Sequence[str]) -> list[str]:
    """The names, checked against ``fewstep.langevin.SAMPLERS`` and the blackjax peers."""
    from .mcmc_peers import PEER_SAMPLERS

    known = [*SAMPLERS, *PEER_SAMPLERS]
    for name in samplers:
        if name not in known:
            raise ValueError(
                f"samplers: unknown sampler {name!r}{suggestion(name, known)}; choose among {', '.join(known)}"
            )
    return list(samplers)


def compare_samplers(
    target: DensityTarget,
    samplers: Sequence[str],
    *,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 500,
    seed: int = 0,
    match_budget: bool = True,
    options: Mapping[str, Options] | None = None,
) -> list[McmcRow]:
    """Run each of ``samplers`` (names of ``fewstep.langevin.SAMPLERS``, or ``"blackjax_nuts"`` /
    ``"blackjax_mala"``) on ``target`` from the same ``chains`` starting points; one :class:`McmcRow` each.

    blackjax's NUTS runs first; with ``match_budget`` the fewstep samplers then get its gradient budget per chain
    (module docstring), blackjax's MALA as many draws as fewstep's MALA (without it, NUTS's budget). ``options`` maps a
    fewstep sampler's name to the keyword options of its runs (``{"baoab": {"friction": 1.0}}``); a ``"warmup"``
    entry there replaces ``warmup`` for that sampler (its warm-up gradients still count in the budget). With a
    ``"warmup_tolerance"`` entry (a kinetic sampler's settled warm-up, :mod:`fewstep.langevin.settle`) the warm-up
    length is found first (capped at ``max_warmup``, by default a tenth of NUTS's budget; the run's draws do not change
    it) and the draws then fill the budget after it."""
    from .mcmc_peers import PEER_SAMPLERS, run_blackjax

    names = check_samplers(samplers)
    x0 = target.initial(chains, torch.Generator().manual_seed(seed))
    order = sorted(names, key=lambda n: n != "blackjax_nuts")
    rows: dict[str, McmcRow] = {}
    budget: int | None = None
    per_sampler_draws: dict[str, int] = {}
    for name in order:
        if name in PEER_SAMPLERS:
            n = draws
            if name == "blackjax_mala" and match_budget:  # fewstep MALA's draws, else NUTS's budget
                n = per_sampler_draws.get("mala", max(budget - warmup - 1, 1) if budget is not None else draws)
            peer = run_blackjax(target, name, x0, draws=n, warmup=warmup, seed=seed)
            rows[name] = measure(target, peer.chains, peer.seconds, seed)
            if name == "blackjax_nuts":
                budget = peer.chains.gradient_evaluations
            continue
        n = draws
        opts = dict((options or {}).get(name, {}))
        own_warmup = int(opts.pop("warmup", warmup))  # a sampler's own warm-up length (same gradient budget)
        if match_budget and budget is not None:
            fixed = {k: v for k, v in opts.items() if k not in SETTLE_OPTIONS}  # the pilots' fixed warm-ups
            if "warmup_tolerance" in opts:  # a settled warm-up: its length first, then the draws that fill the budget
                opts.setdefault("max_warmup", max(own_warmup, int(SETTLED_WARMUP_SHARE * budget)))
                own_warmup = _run(target, name, x0, PILOT, own_warmup, seed, opts).warmup
                opts["max_warmup"] = own_warmup  # the same warm-up again (same seed), whatever the draws
            n = _draws_for_budget(target, name, x0, own_warmup, budget, seed, fixed)
        per_sampler_draws[name] = n
        start = time.perf_counter()
        result = _run(target, name, x0, n, own_warmup, seed, opts)
        rows[name] = measure(target, result, time.perf_counter() - start, seed)
    return [rows[name] for name in names]


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(rows: Sequence[McmcRow]) -> str:
    """The rows as a Markdown table (one per sampler)."""
    head = (
        "| sampler | grad evals / chain | draws | acceptance | ESS bulk | ESS tail | ESS bulk / grad | "
        "ESS tail / grad | max R-hat | diverged | guard rejections | mean err (sd) | var err | sliced W2 | MMD² | time (s) |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.gradient_evaluations} | {r.draws} | {_cell(r.acceptance, '.2f')} | "
            f"{r.ess_bulk:.0f} | {r.ess_tail:.0f} | {r.ess_bulk_per_gradient:.4f} | {r.ess_tail_per_gradient:.4f} | "
            f"{r.split_rhat:.3f} | {r.diverged_chains} | {_cell(r.rejected_steps, 'd')} | {_cell(r.mean_error, '.3f')} | {_cell(r.variance_error, '.3f')} | "
            f"{_cell(r.sliced_w2, '.4f')} | {_cell(r.mmd, '.2e')} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
