"""The randomized midpoint method against NUTS on the rotated Gaussian: a sampler's own warm-up length in the
budget-matched comparison, and the exact linear-Gaussian analysis (benchmarks/langevin_rm_analysis.py) held to
theory and to the sampler's own draws."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch

from fewstep.bench.mcmc_compare import compare_samplers
from fewstep.bench.targets.densities import GaussianDensity
from fewstep.langevin import Target, sample

TARGET = GaussianDensity(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 4.0]), name="g2")
ANALYSIS = Path(__file__).resolve().parents[1] / "benchmarks" / "langevin_rm_analysis.py"


def _analysis():
    spec = importlib.util.spec_from_file_location("langevin_rm_analysis", ANALYSIS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_own_warmup_in_compare_counts_its_gradients() -> None:
    """A ``"warmup"`` option replaces the shared warm-up for that sampler only: OBABO with 80 warm-up iterations
    spends 1 + 80 + 40 gradients, MALA with the shared 30 spends 1 + 30 + 40; the options are not consumed."""
    options = {"obabo": {"warmup": 80}}
    rows = compare_samplers(
        TARGET, ["mala", "obabo"], chains=2, draws=40, warmup=30, match_budget=False, options=options
    )
    by = {r.sampler: r for r in rows}
    assert by["mala"].warmup == 30 and by["mala"].gradient_evaluations == 71
    assert by["obabo"].warmup == 80 and by["obabo"].gradient_evaluations == 121
    assert options == {"obabo": {"warmup": 80}}


def test_exact_baoab_variance_is_the_targets() -> None:
    """BAOAB's position marginal is exact on a Gaussian (Leimkuhler & Matthews 2013) at any stable step; its
    integrated autocorrelation time tends to the continuous ``2 gamma / (omega^2 h)`` as ``h`` falls."""
    a = _analysis()
    sigma = np.diag([1.0, 0.25, 0.01])
    for h in (0.01, 0.1, 0.15):
        e = a.exact(sigma, np.ones(3), h, 0.5, "baoab", lags=20_000)
        np.testing.assert_allclose(e.variance_ratio, 1.0, rtol=1e-9)
    e = a.exact(sigma, np.ones(3), 0.001, 2.0, "baoab", lags=60_000)
    np.testing.assert_allclose(e.iact_full[1], 2 * 2.0 * 0.25 / 0.001, rtol=0.01)


def test_exact_midpoint_variance_matches_the_samplers_draws() -> None:
    """The randomized midpoint's stationary variance on ``N(0, 1 / omega^2)``, ``omega = 10``, from the exact
    recursion against the sampler's own draws (1,000 chains): at ``h omega = 0.5`` and friction 0.17 the analysis
    gives about 1.5 times the target's (unadjusted bias); the draws agree within 4 standard errors; a small step is
    unbiased."""
    a = _analysis()
    h, gamma, var = 0.05, 0.17, 0.01
    e = a.exact(np.eye(1) * var, np.ones(1), h, gamma, "randomized_midpoint", lags=10)
    predicted = float(e.variance_ratio[0])
    assert 1.4 < predicted < 1.7 and e.radius < 1.0
    target = Target.from_log_prob(lambda x: -0.5 * x.square().sum(-1) / var)
    x0 = torch.randn(1000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * math.sqrt(var)
    run = sample(target, "randomized_midpoint", x0, draws=600, warmup=0, step_size=h, friction=gamma,
                 adapt_mass=False, generator=torch.Generator().manual_seed(2), max_energy_error=math.inf)  # fmt: skip
    chain_var = run.draws[:, 200:, 0].square().mean(1) / var  # each chain's mean square over 400 correlated draws
    se = float(chain_var.std()) / math.sqrt(chain_var.numel())
    assert abs(float(chain_var.mean()) - predicted) < 4 * se, (float(chain_var.mean()), predicted, se)
    small = a.exact(np.eye(1) * var, np.ones(1), 0.001, gamma, "randomized_midpoint", lags=10)
    assert abs(float(small.variance_ratio[0]) - 1.0) < 1e-4


def test_midpoint_mean_square_stability_edge() -> None:
    """At low friction the randomized midpoint's mean-square stability ends near ``h omega = 0.6`` (leapfrog's at
    2): at ``omega = 10`` stable at ``h omega = 0.5``, unstable at 0.7; a friction of 3 moves the edge out."""
    a = _analysis()
    stiff = np.eye(1) * 0.01
    assert a.exact(stiff, np.ones(1), 0.05, 0.17, "randomized_midpoint", lags=2).radius < 1.0
    assert a.exact(stiff, np.ones(1), 0.07, 0.17, "randomized_midpoint", lags=2).radius > 1.0
    assert a.exact(stiff, np.ones(1), 0.07, 3.0, "randomized_midpoint", lags=2).radius < 1.0
