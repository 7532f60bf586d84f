"""Convergence diagnostics of MCMC draws: rank-normalised ESS (bulk and tail), split R-hat, MCSE.

All statistics take draws of shape ``(chains, draws, *shape)`` (``(chains, draws)`` for one scalar quantity) and
return one value per coordinate, shape ``shape``; they follow Vehtari, Gelman, Simpson, Carpenter and Bürkner,
"Rank-normalization, folding, and localization: an improved R-hat for assessing convergence of MCMC" (Bayesian
Analysis, 2021), as Stan and ArviZ compute them.

With ``M`` chains of ``N`` draws, within-chain autocovariances ``c_{m,t}`` (by FFT), the mean within-chain variance
``W = mean_m c_{m,0} N / (N - 1)`` and the pooled variance estimate ``var+ = W (N - 1) / N + B / N`` (``B / N``
the variance of the chain means), the combined autocorrelation is

    rho_t = 1 - (W - mean_m c_{m,t}) / var+,

and Geyer's initial monotone sequence estimator truncates and smooths it: with pair sums
``P_k = rho_{2k} + rho_{2k+1}``, keep the pairs up to the first non-positive one, make them non-increasing, and

    tau = -1 + 2 sum_{k <= K} P_k + rho_{2K+2}^+,    ESS = M N / tau

(``rho_{2K+2}^+`` the next even-lag autocorrelation when positive). The rank-normalised statistics apply this to
the *split* chains (each chain cut in half, so 2M chains of N // 2 draws; an odd N drops its middle draw) after the
normal-score transform ``z = Phi^{-1}((r - 3/8) / (S + 1/4))`` of the pooled ranks ``r`` (ties averaged, ``S`` the
number of draws):

- ``ess_bulk``: ESS of ``z`` (efficiency for the centre of the distribution);
- ``ess_tail``: the smaller ESS of the indicators ``x <= q_0.05`` and ``x <= q_0.95``;
- ``split_rhat``: the larger of the classic R-hat ``sqrt(((N - 1) / N W + B / N) / W)`` of ``z`` and of the
  normal scores of the folded draws ``|x - median(x)|``;
- ``ess_mean`` / ``mcse_mean``: ESS of the split draws themselves, and ``sd / sqrt(ess_mean)``.

Work is done in float64 on the draws' device (on the CPU for a device without float64), vectorised over
coordinates; nothing here loops over draws in Python. A coordinate with a NaN or infinite draw gets NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Summary",
    "ess",
    "ess_bulk",
    "ess_mean",
    "ess_tail",
    "mcse_mean",
    "per_chain",
    "rhat",
    "split_rhat",
    "summary",
]

TAIL_PROBS = (0.05, 0.95)  # the quantiles whose indicators ess_tail measures
BLOM = 3.0 / 8.0  # the offset of the normal-score transform (Blom 1958), as Stan and ArviZ use


def _as_draws(draws: Tensor, name: str = "draws") -> tuple[Tensor, tuple[int, ...]]:
    """``draws`` as float64 ``(chains, draws, K)`` on a float64-capable device, and the trailing shape."""
    if not isinstance(draws, Tensor):
        try:
            draws = torch.as_tensor(draws)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{name}: need a tensor of shape (chains, draws, *shape), got {type(draws).__name__}"
            ) from err
    if draws.ndim < 2:
        raise ValueError(
            f"{name}: need shape (chains, draws, *shape) (or (chains, draws) for one quantity), "
            f"got {tuple(draws.shape)}; for a single chain use draws[None]"
        )
    if draws.is_complex() or draws.dtype == torch.bool:
        raise TypeError(f"{name}: need real numbers, got dtype {draws.dtype}")
    chains, n = draws.shape[:2]
    if chains < 1 or n < 4:
        raise ValueError(f"{name}: need at least 1 chain and 4 draws per chain, got shape {tuple(draws.shape)}")
    device = draws.device if draws.device.type in ("cpu", "cuda") else torch.device("cpu")
    shape = tuple(draws.shape[2:])
    x = draws.detach().to(device=device, dtype=torch.float64).reshape(chains, n, -1)
    return x, shape


def _split(x: Tensor) -> Tensor:
    """Each chain cut into its first and last ``N // 2`` draws: ``(2M, N // 2, K)``."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, x.shape[1] - half :]], dim=0)


def _quantile_sorted(sorted_x: Tensor, q: float) -> Tensor:
    """The ``q``-quantile (linear interpolation, NumPy's default) of each column of ``sorted_x`` (S, K)."""
    pos = q * (sorted_x.shape[0] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, sorted_x.shape[0] - 1)
    return sorted_x[lo] + (pos - lo) * (sorted_x[hi] - sorted_x[lo])


def _pooled_sorted(x: Tensor) -> Tensor:
    """All draws of each coordinate, sorted: ``(K, S)``."""
    return x.reshape(-1, x.shape[-1]).T.contiguous().sort(dim=1).values


def _normal_scores(x: Tensor) -> Tensor:
    """The rank-normalised draws ``Phi^{-1}((r - 3/8) / (S + 1/4))`` with pooled, tie-averaged ranks ``r``."""
    flat = x.reshape(-1, x.shape[-1]).T.contiguous()  # (K, S)
    sorted_x = flat.sort(dim=1).values
    below = torch.searchsorted(sorted_x, flat, side="left")
    upto = torch.searchsorted(sorted_x, flat, side="right")
    rank = (below + upto + 1).to(torch.float64) / 2.0  # 1-based rank, ties get their average
    s = flat.shape[1]
    z = torch.special.ndtri((rank - BLOM) / (s - 2.0 * BLOM + 1.0))
    return z.T.reshape(x.shape)


def _autocovariance(x: Tensor) -> Tensor:
    """Biased autocovariances ``c_t = 1/N sum_i (x_i - mean)(x_{i+t} - mean)`` along dim 1, lags 0..N-1."""
    n = x.shape[1]
    centred = x - x.mean(dim=1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()  # zero-padded so the circular correlation is the linear one
    f = torch.fft.rfft(centred, n=size, dim=1)
    return torch.fft.irfft(f * f.conj(), n=size, dim=1)[:, :n] / n


def _finite_only(x: Tensor, values: Tensor) -> Tensor:
    """``values`` with NaN for the coordinates where a draw is NaN or infinite (ranks would hide them)."""
    return torch.where(torch.isfinite(x).all(dim=1).all(dim=0), values, torch.full_like(values, math.nan))


def _geyer_ess(x: Tensor) -> Tensor:
    """ESS of ``(M, N, K)`` draws by Geyer's initial monotone sequence (module docstring); constant columns get
    ``M N``, columns with a non-finite value NaN."""
    m, n, _ = x.shape
    total = m * n
    acov = _autocovariance(x).mean(dim=0)  # (N, K): mean over chains
    within = acov[0] * n / (n - 1.0)
    var_plus = within * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + x.mean(dim=1).var(dim=0, unbiased=True)
    constant = (x.amax(dim=(0, 1)) - x.amin(dim=(0, 1))) < torch.finfo(torch.float64).resolution
    safe_var = torch.where(constant, torch.ones_like(var_plus), var_plus)
    rho = 1.0 - (within - acov) / safe_var  # (N, K)
    rho[0] = 1.0
    pairs = n // 2
    even, odd = rho[0 : 2 * pairs : 2], rho[1 : 2 * pairs : 2]  # (pairs, K)
    pair_sum = even + odd
    kept = torch.cumprod((pair_sum > 0).to(torch.int8), dim=0).bool()
    monotone = torch.cummin(torch.where(kept, pair_sum, torch.full_like(pair_sum, math.inf)), dim=0).values
    tau = -1.0 + 2.0 * torch.where(kept, monotone, torch.zeros_like(monotone)).sum(dim=0)
    after = kept.sum(dim=0)  # index of the first pair left out
    has_next = after < pairs
    next_even = even.gather(0, after.clamp(max=pairs - 1)[None])[0]
    tau = tau + torch.where(has_next & (next_even > 0), next_even, torch.zeros_like(next_even))
    tau = tau.clamp(min=1.0 / math.log10(total))
    out = total / tau
    out = torch.where(constant, torch.full_like(out, float(total)), out)
    return _finite_only(x, out)


def _classic_rhat(x: Tensor) -> Tensor:
    """Gelman-Rubin ``sqrt(((N - 1) / N W + B / N) / W)`` of ``(M, N, K)`` draws (M >= 2)."""
    n = x.shape[1]
    within = x.var(dim=1, unbiased=True).mean(dim=0)
    between_over_n = x.mean(dim=1).var(dim=0, unbiased=True)
    return torch.sqrt(((n - 1.0) / n * within + between_over_n) / within)


def _shaped(values: Tensor, shape: tuple[int, ...]) -> Tensor:
    return values.reshape(shape)


def _ess_bulk(x: Tensor) -> Tensor:
    return _finite_only(x, _geyer_ess(_normal_scores(_split(x))))


def _ess_tail(x: Tensor, probs: tuple[float, float]) -> Tensor:
    sorted_x = _pooled_sorted(x).T  # (S, K): the quantiles of all draws, as ArviZ takes them
    split = _split(x)
    low, high = (_geyer_ess((split <= _quantile_sorted(sorted_x, p)).to(torch.float64)) for p in probs)
    return _finite_only(x, torch.minimum(low, high))


def _split_rhat(x: Tensor) -> Tensor:
    split = _split(x)
    median = _quantile_sorted(_pooled_sorted(split).T, 0.5)
    bulk = _classic_rhat(_normal_scores(split))
    tail = _classic_rhat(_normal_scores((split - median).abs()))
    return _finite_only(x, torch.maximum(bulk, tail))


def _mcse_mean(x: Tensor) -> Tensor:
    sd = x.reshape(-1, x.shape[-1]).std(dim=0, unbiased=True)
    return sd / torch.sqrt(_geyer_ess(_split(x)))


def _check_probs(probs: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in probs)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (0.0 < low < 1.0 and 0.0 < high < 1.0):
        raise ValueError(f"probs: need two probabilities in (0, 1), got {probs!r}; the default is {TAIL_PROBS}")
    return low, high


def ess(draws: Tensor) -> Tensor:
    """The basic ESS of ``draws`` (chains, draws, *shape), unsplit and not rank-normalised (Geyer 1992; what
    ``blackjax.diagnostics.effective_sample_size`` and NumPyro compute)."""
    x, shape = _as_draws(draws)
    return _shaped(_geyer_ess(x), shape)


def ess_mean(draws: Tensor) -> Tensor:
    """ESS of the split chains' draws themselves: the efficiency of the posterior-mean estimate (ArviZ's
    ``method="mean"``)."""
    x, shape = _as_draws(draws)
    return _shaped(_geyer_ess(_split(x)), shape)


def ess_bulk(draws: Tensor) -> Tensor:
    """Bulk ESS: the ESS of the rank-normalised split chains (Vehtari et al. 2021, section 4.3)."""
    x, shape = _as_draws(draws)
    return _shaped(_ess_bulk(x), shape)


def ess_tail(draws: Tensor, probs: tuple[float, float] = TAIL_PROBS) -> Tensor:
    """Tail ESS: the smaller ESS of the split chains' indicators ``x <= q_p`` for ``p`` in ``probs`` (default the
    5% and 95% quantiles of all draws; Vehtari et al. 2021, section 4.3)."""
    low_high = _check_probs(probs)
    x, shape = _as_draws(draws)
    return _shaped(_ess_tail(x, low_high), shape)


def rhat(draws: Tensor) -> Tensor:
    """The classic (unsplit, not rank-normalised) potential scale reduction of Gelman and Rubin (1992)."""
    x, shape = _as_draws(draws)
    if x.shape[0] < 2:
        raise ValueError(f"draws: rhat needs at least 2 chains, got {x.shape[0]}; split_rhat works with one")
    return _shaped(_classic_rhat(x), shape)


def split_rhat(draws: Tensor) -> Tensor:
    """Rank-normalised split R-hat: the larger of the split R-hat of the normal scores of the draws and of the
    folded draws ``|x - median|`` (Vehtari et al. 2021, section 4.2). Values above 1.01 flag chains that have
    not mixed."""
    x, shape = _as_draws(draws)
    return _shaped(_split_rhat(x), shape)


def mcse_mean(draws: Tensor) -> Tensor:
    """Monte Carlo standard error of the posterior-mean estimate, ``sd / sqrt(ess_mean)``."""
    x, shape = _as_draws(draws)
    return _shaped(_mcse_mean(x), shape)


def per_chain(statistic: Callable[[Tensor], Tensor], draws: Tensor) -> Tensor:
    """``statistic`` (one of the ESS functions above) computed on each chain alone: shape ``(chains, *shape)``."""
    x, shape = _as_draws(draws)
    chains, n, k = x.shape
    one_chain = x.permute(1, 0, 2).reshape(1, n, chains * k)  # every (chain, coordinate) a coordinate of one chain
    return statistic(one_chain).reshape(chains, *shape)


@dataclass(frozen=True)
class Summary:
    """Per-coordinate diagnostics of a set of chains (each a tensor of the draws' trailing shape).

    ``mean``, ``sd``: pooled over chains and draws; ``mcse_mean``: Monte Carlo standard error of ``mean``;
    ``ess_bulk``, ``ess_tail``, ``split_rhat``: as the functions of the same name; ``chains``, ``draws``: the
    number of chains and of draws per chain.
    """

    mean: Tensor
    sd: Tensor
    mcse_mean: Tensor
    ess_bulk: Tensor
    ess_tail: Tensor
    split_rhat: Tensor
    chains: int
    draws: int

    @property
    def min_ess_bulk(self) -> float:
        return float(self.ess_bulk.min())

    @property
    def min_ess_tail(self) -> float:
        return float(self.ess_tail.min())

    @property
    def max_rhat(self) -> float:
        return float(self.split_rhat.max())

    def table(self, names: Sequence[str] | None = None, max_rows: int = 20) -> str:
        """A text table, one row per coordinate (the first ``max_rows``), as ArviZ's ``summary`` prints."""
        flat = {f: getattr(self, f).reshape(-1).tolist() for f in ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail")}
        rhats = self.split_rhat.reshape(-1).tolist()
        count = len(rhats)
        if names is not None and len(names) != count:
            raise ValueError(f"names: need {count} names (one per coordinate), got {len(names)}")
        labels = list(names) if names is not None else [f"x[{i}]" for i in range(count)]
        width = max(len(s) for s in labels[:max_rows] + ["name"])
        lines = [f"{'name':<{width}}  {'mean':>9} {'sd':>9} {'mcse':>9} {'ess_bulk':>9} {'ess_tail':>9} {'r_hat':>6}"]
        for i in range(min(count, max_rows)):
            lines.append(
                f"{labels[i]:<{width}}  {flat['mean'][i]:>9.4g} {flat['sd'][i]:>9.4g} {flat['mcse_mean'][i]:>9.2g} "
                f"{flat['ess_bulk'][i]:>9.0f} {flat['ess_tail'][i]:>9.0f} {rhats[i]:>6.3f}"
            )
        if count > max_rows:
            lines.append(f"... {count - max_rows} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary(draws: Tensor) -> Summary:
    """:class:`Summary` of ``draws`` (chains, draws, *shape): mean, sd, MCSE, bulk/tail ESS and split R-hat."""
    x, shape = _as_draws(draws)
    pooled = x.reshape(-1, x.shape[-1])
    return Summary(
        mean=_shaped(pooled.mean(dim=0), shape),
        sd=_shaped(pooled.std(dim=0, unbiased=True), shape),
        mcse_mean=_shaped(_mcse_mean(x), shape),
        ess_bulk=_shaped(_ess_bulk(x), shape),
        ess_tail=_shaped(_ess_tail(x, TAIL_PROBS), shape),
        split_rhat=_shaped(_split_rhat(x), shape),
        chains=int(x.shape[0]),
        draws=int(x.shape[1]),
    )
