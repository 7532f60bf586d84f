"""The settled warm-up (fewstep.langevin.settle): the stop rule on constructed sequences of mass estimates (stops
once three consecutive windows agree within the tolerance, never before the minimum's windows, never past the cap),
the change statistic's noise formula against a Monte Carlo, the warm-up's gradients counted in the chain's total,
and a settled warm-up recovering a diagonal Gaussian's variances."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.langevin as L
from fewstep.langevin.adaptation import mass_windows
from fewstep.langevin.settle import SettlingSchedule, mass_change, mass_change_noise


def _feed(schedule: SettlingSchedule, log_levels: list[float]) -> int:
    """Give the schedule one estimate ``exp(level) * ones`` per slow window, in order, until it stops extending;
    return how many estimates it used."""
    used = 0
    while used < len(schedule.windows):
        window = schedule.windows[used]
        schedule.end_window(window, torch.full((3,), math.exp(log_levels[used]), dtype=torch.float64))
        used += 1
    return used


def test_mass_change_is_the_rms_log_ratio() -> None:
    new = torch.tensor([2.0, 0.5, 1.0, 1.0])
    old = torch.ones(4)
    assert mass_change(new, old) == pytest.approx(math.log(2.0) * math.sqrt(2.0 / 4.0))
    assert mass_change(3.0 * old, 3.0 * old) == 0.0
    assert mass_change(5.0 * new, 5.0 * old) == pytest.approx(mass_change(new, old))  # scale-free


def test_mass_change_noise_matches_independent_gaussian_windows() -> None:
    """Two windows of independent N(0, sigma_i^2) draws, sigma_i spread over 4 decades: the RMS log change of their
    variance estimates is sqrt(2 / (n1 - 1) + 2 / (n2 - 1)) (to a few percent over 4,000 coordinates)."""
    g = torch.Generator().manual_seed(0)
    d, n1, n2 = 4000, 400, 200
    scale = torch.logspace(-2, 2, d, dtype=torch.float64)
    v1 = (torch.randn(n1, d, generator=g, dtype=torch.float64) * scale).var(0)
    v2 = (torch.randn(n2, d, generator=g, dtype=torch.float64) * scale).var(0)
    assert mass_change(v1, v2) == pytest.approx(mass_change_noise(n1, n2), rel=0.05)


def test_stops_when_three_windows_agree() -> None:
    """Minimum 500: Stan's windows end at 100, 150, 250, 450. The levels change by 1, 1, 1 (the minimum's last
    window still drifting), 0.3 (one agreement is not enough), 0.8, 0.35, 0.2: settled at the eighth window, the
    first whose change and its predecessor's are both within 0.4."""
    schedule = SettlingSchedule(minimum=500, tolerance=0.4, max_warmup=100_000)
    assert [w.stop for w in schedule.windows] == [w.stop for w in mass_windows(500)] == [100, 150, 250, 450]
    levels = [0.0, 1.0, 2.0, 3.0, 3.3, 4.1, 4.45, 4.65, 99.0]
    used = _feed(schedule, levels)
    assert used == 8
    sizes = [len(w) for w in schedule.windows]
    assert sizes == [25, 50, 100, 200, 400, 800, 1600, 3200]  # Stan's doubling past the minimum
    assert schedule.length == schedule.windows[-1].stop + 50  # the terminal buffer after the last window
    assert [h.extended for h in schedule.history] == [False, False, False, True, True, True, True, False]
    assert [round(h.change, 6) for h in schedule.history[1:]] == [1.0, 1.0, 1.0, 0.3, 0.8, 0.35, 0.2]


def test_never_stops_before_the_minimum() -> None:
    """Constant estimates agree from the second window on, yet the minimum's four windows all run."""
    schedule = SettlingSchedule(minimum=500, tolerance=0.4, max_warmup=100_000)
    assert _feed(schedule, [0.0] * 10) == 4
    assert schedule.length == 500
    assert not any(h.extended for h in schedule.history)


def test_minimum_with_two_windows_extends_to_a_third() -> None:
    schedule = SettlingSchedule(minimum=200, tolerance=0.4, max_warmup=100_000)
    assert len(schedule.windows) == 2
    assert _feed(schedule, [0.0] * 10) == 3


@pytest.mark.parametrize("cap", [500, 999, 1000, 1700, 4321])
def test_never_past_the_cap(cap: int) -> None:
    """A mass that never settles (a change of 1 every window) stops at the cap or before it: the last window ends
    by ``cap - terminal buffer`` and is at least as long as the one before."""
    schedule = SettlingSchedule(minimum=500, tolerance=0.4, max_warmup=cap)
    _feed(schedule, [float(i) for i in range(40)])
    assert schedule.length <= cap
    assert schedule.windows[-1].stop + 50 == schedule.length
    assert all(len(b) >= len(a) for a, b in zip(schedule.windows[3:], schedule.windows[4:], strict=False))
    assert cap - schedule.length < 2 * len(schedule.windows[-1]) + 1  # no room was left for another window


def test_invalid_options_are_named() -> None:
    with pytest.raises(ValueError, match="warmup_tolerance"):
        SettlingSchedule(minimum=500, tolerance=0.0, max_warmup=1000)
    with pytest.raises(ValueError, match="max_warmup"):
        SettlingSchedule(minimum=500, tolerance=0.4, max_warmup=400)
    with pytest.raises(ValueError, match="warmup >= 20"):
        SettlingSchedule(minimum=10, tolerance=0.4, max_warmup=1000)
    target = L.Target.from_log_prob(lambda x: -0.5 * (x * x).sum(-1))
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="adapt_mass"):
        L.sample(target, "randomized_midpoint", x0, draws=5, warmup=100, warmup_tolerance=0.4, adapt_mass=False)
    with pytest.raises(ValueError, match="warmup_tolerance"):
        L.sample(target, "randomized_midpoint", x0, draws=5, warmup=100, max_warmup=300)


VARIANCES = torch.logspace(-2, 0, 8, dtype=torch.float64)


def _gaussian(calls: list[int]) -> L.Target:
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return -0.5 * (x * x / VARIANCES).sum(-1)

    return L.Target.from_log_prob(log_prob)


def test_settled_warmup_gradients_are_counted_and_recover_the_variances() -> None:
    """An 8-D diagonal Gaussian (variances 0.01 to 1) from a start 5 standard deviations out: the warm-up extends
    past its minimum (100), stops before its cap, spends one gradient per iteration (the randomized midpoint two per
    draw, one at the start), all in ``gradient_evaluations`` and in the log-density's own call count; the settled
    inverse mass is within a factor exp(0.4) of every true variance and its RMS log error within the tolerance."""
    calls: list[int] = []
    x0 = 5.0 * VARIANCES.sqrt() * torch.ones(4, 8, dtype=torch.float64)
    chains = L.sample(
        _gaussian(calls), "randomized_midpoint", x0, draws=300, warmup=100, warmup_tolerance=0.2,
        max_warmup=20_000, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert 100 < chains.warmup < 20_000
    assert chains.num_draws == 300
    assert chains.gradient_evaluations == 1 + chains.warmup + 2 * 300 == len(calls)
    assert chains.inverse_mass is not None
    error = torch.log(chains.inverse_mass / VARIANCES)
    assert float(error.abs().max()) < 0.4
    assert float(error.square().mean().sqrt()) < 0.2


def test_compare_samplers_fills_the_budget_after_a_settled_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stand-in for NUTS that spent 3,000 gradients per chain, the settled warm-up (minimum 100, capped at a
    tenth of that budget) runs past its minimum, and its draws then fill the budget: warm-up included, the run spends
    NUTS's gradients (up to one draw's two)."""
    from dataclasses import replace

    from fewstep.bench import mcmc_compare, mcmc_peers
    from fewstep.bench.targets.densities import density_target

    budget = 3000

    def fake_nuts(target: object, name: str, x0: torch.Tensor, **kwargs: object) -> mcmc_peers.PeerRun:
        draws = torch.randn(x0.shape[0], 50, x0.shape[1], generator=torch.Generator().manual_seed(1))
        chains = L.sample(L.Target.from_log_prob(lambda x: -0.5 * (x * x).sum(-1)), "ula", x0, draws=50, step_size=0.1)
        return mcmc_peers.PeerRun(chains=replace(chains, draws=draws, gradient_evaluations=budget), seconds=0.0)

    monkeypatch.setattr(mcmc_peers, "run_blackjax", fake_nuts)
    target = density_target("gaussian", 5)
    rows = mcmc_compare.compare_samplers(
        target, ["randomized_midpoint", "blackjax_nuts"], chains=2, draws=50, warmup=100,
        options={"randomized_midpoint": {"warmup_tolerance": 0.4}},
    )  # fmt: skip
    rm = rows[0]
    assert rm.sampler == "randomized_midpoint"
    assert 100 < rm.warmup <= mcmc_compare.SETTLED_WARMUP_SHARE * budget
    assert budget - 2 <= rm.gradient_evaluations <= budget
    assert rm.gradient_evaluations == 1 + rm.warmup + 2 * rm.draws
