"""Sequential quasi-Monte Carlo (``smc(..., qmc=True)``, :mod:`fewstep.posterior.smc.qmc`): the RQMC points are
marginally uniform (their normals ``N(0, I)``) and stratified, the Hilbert index is a bijective curve of adjacent
cells, the sorted-point resampling keeps ``E[copies] = K w``, and the engine with the option still targets the exact
posterior, at the documented cost, in low and high dimension."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.quasirandom import SobolEngine

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.bench.targets.posterior import as_full_covariance
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, rqmc_normal, smc
from fewstep.posterior.smc.qmc import RQMC, SORT_DIMS, hilbert_keys, hilbert_order, principal_scores, sqmc_ancestors

F64 = torch.float64
SCHED = fewstep.VP()
MEAS = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=torch.tensor([[1.0, 0.0]], dtype=F64))


def test_rqmc_normals_are_standard_normal_over_scrambles() -> None:
    """Each slot's point over 2000 independent scrambles: mean 0, variance 1 per coordinate (4 standard errors)."""
    n = 2000
    z = rqmc_normal(n, 8, (3,), torch.Generator().manual_seed(0), F64)  # n prompts: independent digital shifts
    for slot in (0, 5):
        torch.testing.assert_close(z[:, slot].mean(0), torch.zeros(3, dtype=F64), atol=4 / math.sqrt(n), rtol=0)
        torch.testing.assert_close(z[:, slot].var(0), torch.ones(3, dtype=F64), atol=4 * math.sqrt(2 / n), rtol=0)
    zs = torch.stack([rqmc_normal(1, 8, (3,), torch.Generator().manual_seed(s), F64)[0, 2] for s in range(400)])
    torch.testing.assert_close(zs.mean(0), torch.zeros(3, dtype=F64), atol=4 / math.sqrt(400), rtol=0)
    torch.testing.assert_close(zs.var(0), torch.ones(3, dtype=F64), atol=4 * math.sqrt(2 / 400), rtol=0)


def test_rqmc_sets_are_stratified_and_beat_iid() -> None:
    """K = 2^m points: one in each interval ``[j/K, (j+1)/K)`` of every coordinate (a net's projections), and the
    set mean of the normals varies far less than an iid set's ``1/sqrt(K)``."""
    k = 64
    u = RQMC(200, k, 5, torch.Generator().manual_seed(1)).uniform()
    assert u.shape == (200, k, 5) and bool(((u > 0) & (u < 1)).all())
    cells = (u * k).floor().sort(dim=1).values
    assert bool((cells == torch.arange(k, dtype=F64)[None, :, None]).all())
    means = torch.special.ndtri(u).mean(1)  # (200, 5)
    assert float(means.std()) < 0.3 / math.sqrt(k)


def test_rqmc_blocks_beyond_sobol_max_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SobolEngine, "MAXDIM", 3)
    source = RQMC(500, 4, 7, torch.Generator().manual_seed(2))
    assert [e.dimension for e in source.engines] == [3, 3, 1]
    u = source.uniform()
    assert u.shape == (500, 4, 7)
    torch.testing.assert_close(u[:, 1].mean(0), torch.full((7,), 0.5, dtype=F64), atol=4 * math.sqrt(1 / 6000), rtol=0)


@pytest.mark.parametrize(("d", "bits"), [(2, 1), (2, 3), (3, 2), (4, 2), (3, 3)])
def test_hilbert_index_is_a_curve_of_adjacent_cells(d: int, bits: int) -> None:
    """The index of the ``2^(bits d)`` grid cells is a bijection onto ``0 .. 2^(bits d) - 1`` and consecutive cells
    are neighbours (Manhattan distance 1): the Hilbert curve's defining properties."""
    pts = torch.tensor(list(itertools.product(range(2**bits), repeat=d)))
    keys = hilbert_keys(pts, bits)
    assert keys.shape == (len(pts), 1)
    index = keys[:, 0] >> (62 - bits * d)
    order = index.argsort()
    assert bool((index[order] == torch.arange(len(pts))).all())
    walk = pts[order]
    assert bool(((walk[1:] - walk[:-1]).abs().sum(1) == 1).all())


def test_hilbert_order_many_words_and_one_dimension() -> None:
    x = torch.randn(3, 50, 70, generator=torch.Generator().manual_seed(3), dtype=F64)  # 70 x 2 bits: 3 words
    order = hilbert_order(x)
    assert bool((order.sort(1).values == torch.arange(50)).all())
    y = torch.randn(2, 9, 1, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hilbert_order(y), y[..., 0].argsort(1))


def test_principal_scores_keep_the_particles_geometry() -> None:
    """With ``rank = K - 1`` the scores' pairwise distances are the particles' own, in 3,000 dimensions."""
    x = torch.randn(2, 12, 3000, generator=torch.Generator().manual_seed(8), dtype=F64)
    scores = principal_scores(x, 11)
    assert scores.shape == (2, 12, 11)
    torch.testing.assert_close(torch.cdist(scores, scores), torch.cdist(x, x), rtol=0.0, atol=1e-9)
    spread = scores.var(1)
    assert bool((spread[:, :-1] >= spread[:, 1:] - 1e-9).all())  # leading axes first


def test_a_large_state_is_sorted_by_its_geometry_alone() -> None:
    """Above ``SORT_DIMS`` coordinates the order depends only on the particles' pairwise geometry: a rotation and a
    shift of the state leave it unchanged (the coordinate-wise sort of a smaller state does not have this)."""
    gen = torch.Generator().manual_seed(9)
    d = 2 * SORT_DIMS
    x = torch.randn(3, 40, d, generator=gen, dtype=F64) * torch.linspace(0.1, 3.0, d, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    order = hilbert_order(x)
    assert bool((order.sort(1).values == torch.arange(40)).all())
    torch.testing.assert_close(hilbert_order(x @ q + 5.0), order)
    small = x[..., :SORT_DIMS]
    qs, _ = torch.linalg.qr(torch.randn(SORT_DIMS, SORT_DIMS, generator=gen, dtype=F64))
    assert not bool((hilbert_order(small @ qs) == hilbert_order(small)).all())


def test_sqmc_resampling_is_unbiased() -> None:
    """``E[#copies of j] = K w_j`` over scrambles, by hand: ``w = (0.1, 0.2, 0.3, 0.4)``, ``K = 4`` in a scrambled
    Hilbert order."""
    n, k = 4000, 4
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    order = torch.tensor([2, 0, 3, 1]).expand(n, k)
    u0 = RQMC(n, k, 1, torch.Generator().manual_seed(5)).uniform()[..., 0].sort(1).values
    idx = sqmc_ancestors(w.log().expand(n, k), order, u0)
    copies = torch.zeros(n, k, dtype=F64).scatter_add_(1, idx, torch.ones(n, k, dtype=F64))
    assert bool((copies.sum(1) == k).all())
    se = copies.std(0) / math.sqrt(n)
    assert bool(((copies.mean(0) - k * w).abs() <= 4 * se + 1e-12).all()), (copies.mean(0), k * w)


def _gaussian_posterior(dim: int, k: int, nfe: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, float, float]:
    """SQMC on the prior ``N(m, 0.5^2 I)`` with ``y = x_1 + n`` (``y = 1.4``, noise 0.3): the weighted mean, the
    observed coordinate's weighted variance and the final ESS."""
    m = [1.0, -0.5] + [0.25] * (dim - 2)
    prior = GaussianMixture([m], [0.5], [1.0])
    a = torch.zeros(1, dim, dtype=F64)
    a[0, 0] = 1.0
    meas = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=a)
    model = as_full_covariance(prior).model(SCHED, "epsilon")
    gen = torch.Generator().manual_seed(6)
    start = rqmc_normal(1, k, (dim,), gen, dtype)
    calls = fewstep.CallCount()
    r = smc(model, start, SCHED, TDS(meas), nfe=nfe, generator=gen, qmc=True, calls=calls)
    assert calls.network == nfe and calls.backward == nfe - 1
    assert r.samples.dtype == dtype and bool(torch.isfinite(r.samples).all())
    x, w = r.samples[0].to(F64), r.weights[0].to(F64)
    mean = (w[:, None] * x).sum(0)
    return mean, float((w * (x[:, 0] - mean[0]).square()).sum()), float(r.ess[-1, 0])


@pytest.mark.parametrize(("dim", "k"), [(2, 1024), (70, 256), (300, 128)])
def test_sqmc_keeps_the_exact_gaussian_posterior(dim: int, k: int) -> None:
    """The exact posterior: ``x_1`` has precision ``1/0.25 + 1/0.09``, the other coordinates keep the prior."""
    mean, var, ess = _gaussian_posterior(dim, k, 20)
    v1 = 1.0 / (1.0 / 0.25 + 1.0 / 0.09)
    m1 = v1 * (1.0 / 0.25 + 1.4 / 0.09)
    exact = torch.tensor([m1, -0.5] + [0.25] * (dim - 2), dtype=F64)
    tol = 4.0 * math.sqrt(0.25 / ess)
    torch.testing.assert_close(mean, exact, atol=tol, rtol=0.0)
    assert abs(var - v1) < 0.25 * v1, (var, v1)


def test_sqmc_runs_in_float32() -> None:
    mean, _, _ = _gaussian_posterior(2, 64, 8, torch.float32)
    assert bool(torch.isfinite(mean).all())


def test_default_unchanged_and_option_wired() -> None:
    model = as_full_covariance(mixture_2d()).model(SCHED, "epsilon")
    start = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    runs = [
        smc(model, start, SCHED, TDS(MEAS), nfe=6, generator=torch.Generator().manual_seed(8), **opt)
        for opt in ({}, {"qmc": False}, {"qmc": True})
    ]
    torch.testing.assert_close(runs[0].samples, runs[1].samples, rtol=0.0, atol=0.0)
    assert not torch.allclose(runs[0].samples, runs[2].samples)
    # weights stay normalised, the particles are the prompts' own (prompt-major rows)
    torch.testing.assert_close(runs[2].weights.sum(1), torch.ones(2, dtype=F64))


def _never(*args: object, **kwargs: object) -> torch.Tensor:
    raise AssertionError("the model must not be called")


def test_bad_options_fail_before_any_model_call() -> None:
    start = torch.randn(1, 4, 2, dtype=F64)
    with pytest.raises(TypeError, match="qmc"):
        smc(_never, start, SCHED, TDS(MEAS), nfe=4, qmc="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resample.*systematic"):
        smc(_never, start, SCHED, TDS(MEAS), nfe=4, qmc=True, resample="multinomial")
    with pytest.raises(ValueError, match="particles"):
        RQMC(1, 0, 2)
    with pytest.raises(ValueError, match="sample_shape"):
        rqmc_normal(1, 4, ())
    with pytest.raises(TypeError, match="dtype"):
        rqmc_normal(1, 4, (2,), dtype=torch.int64)
