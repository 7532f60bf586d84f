"""fewstep.langevin.diagnostics: ESS (bulk, tail, basic), split R-hat and MCSE against exact answers.

AR(1) chains ``x_t = rho x_{t-1} + e_t`` have integrated autocorrelation time ``(1 + rho) / (1 - rho)``, so
``ESS = M N (1 - rho) / (1 + rho)``; the rank normalisation is checked against SciPy's ranks and normal quantiles,
the R-hat formulas against NumPy arithmetic, and the Geyer estimator against blackjax's where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal, stats

from fewstep.langevin import diagnostics as dg


def ar1(chains: int, draws: int, dims: int, rho: float, seed: int = 0) -> np.ndarray:
    """Stationary AR(1) chains with unit innovations, shape (chains, draws, dims)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, draws, dims))
    e[:, 0] /= np.sqrt(1.0 - rho**2)  # start in the stationary law
    return signal.lfilter([1.0], [1.0, -rho], e, axis=1)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9, -0.4])
def test_ess_matches_ar1_autocorrelation_time(rho: float) -> None:
    m, n = 4, 20_000
    x = ar1(m, n, 3, rho)
    exact = m * n * (1.0 - rho) / (1.0 + rho)
    for fn in (dg.ess, dg.ess_mean, dg.ess_bulk):
        got = fn(t(x)).numpy()
        np.testing.assert_allclose(got, exact, rtol=0.12, err_msg=f"{fn.__name__} rho={rho}")


def test_ess_bulk_is_rank_based() -> None:
    """ESS bulk and split R-hat depend only on the ranks: invariant under a monotone map, fine for Cauchy draws."""
    x = ar1(4, 2000, 2, 0.3, seed=1)
    for fn in (dg.ess_bulk, dg.ess_tail, dg.split_rhat):
        torch.testing.assert_close(fn(t(np.exp(x))), fn(t(x)))
    cauchy = np.random.default_rng(2).standard_cauchy((4, 2000, 2))
    np.testing.assert_allclose(dg.ess_bulk(t(cauchy)).numpy(), 8000, rtol=0.12)


def test_ess_bulk_is_basic_ess_of_normal_scores() -> None:
    """Rank normalisation as written in Vehtari et al. (2021): split, pooled average ranks, Blom's offsets."""
    rng = np.random.default_rng(3)
    x = np.round(ar1(3, 401, 2, 0.6, seed=3) + rng.standard_normal((3, 401, 2)), 1)  # ties included, odd N
    half = 401 // 2
    split = np.concatenate([x[:, :half], x[:, -half:]], axis=0)
    z = np.empty_like(split)
    for k in range(2):
        r = stats.rankdata(split[..., k], method="average").reshape(split.shape[:2])
        z[..., k] = stats.norm.ppf((r - 0.375) / (split[..., k].size + 0.25))
    torch.testing.assert_close(dg.ess_bulk(t(x)), dg.ess(t(z)))
    folded = np.abs(split - np.median(split, axis=(0, 1)))
    zf = np.empty_like(folded)
    for k in range(2):
        r = stats.rankdata(folded[..., k], method="average").reshape(folded.shape[:2])
        zf[..., k] = stats.norm.ppf((r - 0.375) / (folded[..., k].size + 0.25))
    torch.testing.assert_close(dg.split_rhat(t(x)), torch.maximum(dg.rhat(t(z)), dg.rhat(t(zf))))
    q05, q95 = np.quantile(x, [0.05, 0.95], axis=(0, 1))
    tail = np.minimum(dg.ess(t(split <= q05)).numpy(), dg.ess(t(split <= q95)).numpy())
    np.testing.assert_allclose(dg.ess_tail(t(x)).numpy(), tail, rtol=1e-12)


def test_rhat_formula_and_detection() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 500, 3))
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = x.mean(axis=1).var(axis=0, ddof=1)
    np.testing.assert_allclose(dg.rhat(t(x)).numpy(), np.sqrt(((n - 1) / n * w + b_over_n) / w), rtol=1e-12)
    assert float(dg.split_rhat(t(x)).max()) < 1.01
    shifted = x + np.array([0.0, 0.0, 0.0, 1.0])[:, None, None]  # one chain elsewhere
    assert float(dg.split_rhat(t(shifted)).min()) > 1.1
    # same means, one chain 3x wider: only the folded (tail) R-hat sees it
    wide = x * np.array([1.0, 1.0, 1.0, 3.0])[:, None, None]
    assert float(dg.rhat(t(wide)).max()) < 1.02 < float(dg.split_rhat(t(wide)).min())
    # one chain with a trend: the split halves disagree, the classic R-hat of that chain alone cannot see it
    trend = rng.standard_normal((1, 1000, 1)) + np.linspace(0.0, 3.0, 1000)[None, :, None]
    assert float(dg.split_rhat(t(trend))) > 1.1


def test_iid_tail_ess_mcse_and_summary() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2500, 2)) * np.array([1.0, 3.0]) + 1.0
    np.testing.assert_allclose(dg.ess_tail(t(x)).numpy(), 10_000, rtol=0.12)
    np.testing.assert_allclose(dg.mcse_mean(t(x)).numpy(), np.array([1.0, 3.0]) / 100.0, rtol=0.12)
    s = dg.summary(t(x))
    np.testing.assert_allclose(s.mean.numpy(), x.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(s.sd.numpy(), x.reshape(-1, 2).std(axis=0, ddof=1), rtol=1e-12)
    torch.testing.assert_close(s.ess_bulk, dg.ess_bulk(t(x)))
    assert (s.chains, s.draws) == (4, 2500) and s.max_rhat < 1.01 and s.min_ess_bulk > 8000
    text = s.table(names=["a", "b"])
    assert text.splitlines()[0].split() == ["name", "mean", "sd", "mcse", "ess_bulk", "ess_tail", "r_hat"]
    assert text.splitlines()[2].startswith("b ")


def test_shapes_per_chain_and_edge_values() -> None:
    x = ar1(3, 300, 6, 0.5, seed=6)
    assert dg.ess_bulk(t(x[..., 0])).shape == ()
    assert dg.split_rhat(t(x).reshape(3, 300, 2, 3)).shape == (2, 3)
    per = dg.per_chain(dg.ess_bulk, t(x))
    assert per.shape == (3, 6)
    torch.testing.assert_close(per[1], dg.ess_bulk(t(x[1:2])))
    const = np.ones((2, 50, 2))
    const[..., 1] = np.random.default_rng(0).standard_normal((2, 50))
    assert float(dg.ess(t(const))[0]) == 100.0
    nan = x.copy()
    nan[0, 5, 2] = np.nan
    nan[1, 7, 3] = np.inf
    for fn in (dg.ess, dg.ess_bulk, dg.ess_tail, dg.split_rhat):
        values = fn(t(nan))
        assert torch.isnan(values[2:4]).all() and torch.isfinite(values[[0, 1, 4, 5]]).all(), fn.__name__
    assert dg.ess_bulk(t(x).float()).dtype == torch.float64


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"draws: need shape \(chains, draws"):
        dg.ess_bulk(torch.zeros(100))
    with pytest.raises(ValueError, match="4 draws"):
        dg.split_rhat(torch.zeros(2, 3, 1))
    with pytest.raises(TypeError, match="real numbers"):
        dg.ess(torch.zeros(2, 10, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="probs"):
        dg.ess_tail(torch.randn(2, 10, 1), probs=(0.05, 1.5))
    with pytest.raises(ValueError, match="at least 2 chains"):
        dg.rhat(torch.randn(1, 10, 1))
    with pytest.raises(ValueError, match="names"):
        dg.summary(torch.randn(2, 10, 2)).table(names=["a"])


def geyer_ess_loop(ary: np.ndarray) -> float:
    """Geyer's initial monotone sequence ESS of (chains, draws) written as the loop of Stan and ArviZ."""
    n_chain, n_draw = ary.shape
    c = ary - ary.mean(axis=1, keepdims=True)
    acov = np.array([[c[m, : n_draw - k] @ c[m, k:] / n_draw for k in range(n_draw)] for m in range(n_chain)])
    mean_var = acov[:, 0].mean() * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw + (ary.mean(axis=1).var(ddof=1) if n_chain > 1 else 0.0)
    rho = np.zeros(n_draw)
    rho[0], rho[1] = 1.0, 1.0 - (mean_var - acov[:, 1].mean()) / var_plus
    even, odd, lag = 1.0, rho[1], 1
    while lag < n_draw - 3 and even + odd > 0.0:
        even = 1.0 - (mean_var - acov[:, lag + 1].mean()) / var_plus
        odd = 1.0 - (mean_var - acov[:, lag + 2].mean()) / var_plus
        if even + odd >= 0:
            rho[lag + 1], rho[lag + 2] = even, odd
        lag += 2
    max_lag = lag - 2
    if even > 0:
        rho[max_lag + 1] = even
    lag = 1
    while lag <= max_lag - 2:
        if rho[lag + 1] + rho[lag + 2] > rho[lag - 1] + rho[lag]:
            rho[lag + 1] = rho[lag + 2] = (rho[lag - 1] + rho[lag]) / 2.0
        lag += 2
    tau = -1.0 + 2.0 * rho[: max_lag + 1].sum() + rho[max_lag + 1]
    return n_chain * n_draw / max(tau, 1.0 / np.log10(n_chain * n_draw))


def test_geyer_ess_matches_the_stan_loop() -> None:
    rng = np.random.default_rng(7)
    for shape, rho in [((4, 1000, 3), 0.6), ((3, 501, 2), 0.95), ((1, 300, 2), -0.3), ((2, 64, 4), 0.0)]:
        x = ar1(*shape, rho, seed=shape[1]) + 0.3 * rng.standard_t(3, size=shape)
        loop = [geyer_ess_loop(x[..., k]) for k in range(shape[2])]
        np.testing.assert_allclose(dg.ess(t(x)).numpy(), loop, rtol=1e-10, err_msg=str(shape))


@pytest.mark.blackjax
def test_geyer_ess_and_rhat_match_blackjax() -> None:
    """blackjax's vectorised estimator also makes the one extra even lag monotone, so it can differ from Stan's by
    a fraction of that lag's autocorrelation: 1% here."""
    diagnostics = pytest.importorskip("blackjax.diagnostics")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(7)
    for shape, rho in [((4, 1000, 3), 0.6), ((1, 300, 2), -0.3)]:
        x = ar1(*shape, rho, seed=shape[1]) + 0.3 * rng.standard_t(3, size=shape)
        np.testing.assert_allclose(
            dg.ess(t(x)).numpy(), np.asarray(diagnostics.effective_sample_size(x)), rtol=1e-2, err_msg=str(shape)
        )
        if shape[0] > 1:
            np.testing.assert_allclose(
                dg.rhat(t(x)).numpy(), np.asarray(diagnostics.potential_scale_reduction(x)), rtol=1e-9
            )
