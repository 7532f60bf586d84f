"""The blackjax peer (fewstep.bench.mcmc_peers): NUTS and MALA on a target with exact moments, returned as Chains
with their gradient evaluations counted as fewstep counts them."""

from __future__ import annotations

import pytest
import torch

from fewstep.bench.mcmc_peers import blackjax_available, run_blackjax
from fewstep.bench.targets.densities import GaussianDensity
from fewstep.langevin import Chains

pytestmark = pytest.mark.blackjax

TARGET = GaussianDensity(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([4.0, 1.0, 0.25]), name="gaussian_3d")


def x0(chains: int = 4) -> torch.Tensor:
    return TARGET.initial(chains, torch.Generator().manual_seed(0))


def _within(chains: Chains, k: float) -> None:
    """The chains' mean is within k Monte Carlo standard errors (from the bulk ESS) of the exact mean."""
    d = chains.diagnostics()
    draws = chains.draws.reshape(-1, 3)
    err = (draws.mean(0) - TARGET.mean).abs() / (TARGET.variances / d.ess_bulk).sqrt()
    assert bool((err < k).all()), err
    torch.testing.assert_close(draws.var(0), TARGET.variances, rtol=0.25, atol=0.0)
    assert float(d.split_rhat.max()) < 1.05


def test_blackjax_nuts_and_mala() -> None:
    pytest.importorskip("blackjax")
    nuts = run_blackjax(TARGET, "blackjax_nuts", x0(), draws=400, warmup=300, seed=1).chains
    assert nuts.draws.shape == (4, 400, 3) and nuts.draws.dtype == torch.float64
    assert nuts.sampler == "blackjax_nuts" and nuts.inverse_mass is not None and nuts.inverse_mass.shape == (4, 3)
    assert nuts.gradient_evaluations > 700  # at least one leapfrog step per iteration, plus the initial gradient
    assert bool((nuts.acceptance > 0.6).all())
    _within(nuts, 4.0)
    # the diagonal mass matrix learns the variances
    torch.testing.assert_close(nuts.inverse_mass.mean(0), TARGET.variances, rtol=0.35, atol=0.0)
    mala = run_blackjax(TARGET, "mala", x0(), draws=2000, warmup=500, seed=2).chains
    assert mala.sampler == "blackjax_mala" and mala.gradient_evaluations == 1 + 500 + 2000
    assert bool(((mala.acceptance > 0.4) & (mala.acceptance < 0.8)).all())
    _within(mala, 4.0)


def test_peer_errors() -> None:
    assert blackjax_available() == (pytest.importorskip("blackjax") is not None)
    with pytest.raises(ValueError, match="sampler: blackjax peer must be one of blackjax_nuts, blackjax_mala"):
        run_blackjax(TARGET, "hmc", x0(), draws=10, warmup=10)
    with pytest.raises(ValueError, match="draws"):
        run_blackjax(TARGET, "nuts", x0(), draws=0, warmup=10)
    with pytest.raises(ValueError, match="x0"):
        run_blackjax(TARGET, "nuts", torch.zeros(3), draws=10, warmup=10)
