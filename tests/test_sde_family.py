"""The reverse-SDE family (``fewstep.solvers.sde.sde_family``), ``euler_maruyama``, ER-SDE-Solver-1/2/3 and the
predictor-corrector sampler ``pc_langevin``.

- The family shares the probability-flow marginals on every schedule (variance equation of a Gaussian target).
- Euler-Maruyama's strong order on SDEs with known solutions along one ``fewstep.noise.BrownianPath``: geometric
  Brownian motion 0.5, additive noise 1.0 (measured 0.49 and 1.01), and the solver ``euler_maruyama`` on the
  reverse SDE of a Gaussian target, whose pathwise solution is an Itô integral of the path (measured 0.98 at
  eta = 1, 0.96 at eta = 0.5).
- ER-SDE-Solver orders on the probability-flow ODE (``noise_scale="ode"``), against the exact reference: 0.95,
  2.05, 3.07 (the paper's ``d2_weight="reference"``: 2.22); with the default noise scale, strong convergence to
  the fine-step solution of the same path.
- ER-SDE steps against the paper's formulas (exact integrals by quad), the Langevin corrector against diffusers'
  ``ScoreSdeVeScheduler.step_correct``.
- Special cases, noise plumbing, seeds, recorded transitions and option checks.

The measured orders are printed by ``pytest -s -k "order or strong" tests/test_sde_family.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from helpers import DIFFUSERS_RTOL, FineBrownianPath, randn, rel
from torch import Tensor

import fewstep
from fewstep import sample_with_logprob
from fewstep.bench.metrics import sliced_wasserstein2
from fewstep.bench.targets import GaussianMixture, mixture_2d
from fewstep.bench.targets.reference import reference_solution_from_time
from fewstep.noise import BrownianPath, brownian_noise_sampler
from fewstep.solvers.sde.sde_family import ReverseSDE, em_step, euler_maruyama
from fewstep.spacing import model_times

F64 = torch.float64
NEW = ["euler_maruyama", "er_sde_1", "er_sde_2", "er_sde_3", "pc_langevin"]
TARGET = mixture_2d("default")
WIDE = mixture_2d("wide")
GAUSS = GaussianMixture.single(2, [0.5, -0.3], 0.6)


def slope(counts: list[int], errors: list[float]) -> float:
    return float(-np.polyfit(np.log(counts), np.log(errors), 1)[0])


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().flatten(1).sum(1).mean().sqrt())


# --- the family ----------------------------------------------------------------------------------------------

SCHEDULES = {
    "vp": fewstep.VP(),
    "cosine": fewstep.Cosine(),
    "ddpm": fewstep.DiscreteVP.linear(),
    "ve": fewstep.VE(),
    "edm": fewstep.EDM(),
    "flow": fewstep.Flow(),
    "trig": fewstep.Interpolant(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0, 2.0])
def test_every_member_keeps_the_marginals(name: str, eta: float) -> None:
    """For N(mu, s^2 I) data the marginal is N(alpha mu, v I), v = alpha^2 s^2 + sigma^2, and the score is
    -(x - alpha mu)/v. The linear reverse SDE ``dx = (A x + B) dt + C dW_bar`` keeps it iff (backwards in t)
    ``dm/dt = A m + B`` and ``dv/dt = 2 A v - C^2``; the derivatives of v and alpha are finite differences."""
    sched = SCHEDULES[name]
    sde = ReverseSDE(sched, eta)
    s0, mu = 0.6, 0.5
    for frac in (0.0513, 0.2371, 0.4817, 0.7243, 0.8937):  # off the knots of the discrete schedule
        t = sched.t_min + frac * (sched.t_max - sched.t_min)
        alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
        v = alpha**2 * s0**2 + sigma**2
        c_x, c_eps, c_w = sde.coefficients(float(t))
        # drift c_x x + c_eps eps_hat with eps_hat = -sigma score = sigma (x - alpha mu)/v
        a_coef, b_coef = c_x + c_eps * sigma / v, -c_eps * sigma * alpha * mu / v
        dt = 1e-6 * (sched.t_max - sched.t_min)

        def var(u: float) -> float:
            return float(sched.alpha(u)) ** 2 * s0**2 + float(sched.sigma(u)) ** 2

        dv = (var(t + dt) - var(t - dt)) / (2 * dt)
        dm = mu * (float(sched.alpha(t + dt)) - float(sched.alpha(t - dt))) / (2 * dt)
        assert 2 * a_coef * v - c_w**2 == pytest.approx(dv, rel=1e-6, abs=1e-8)
        assert a_coef * alpha * mu + b_coef == pytest.approx(dm, rel=1e-6, abs=1e-8)


def test_family_coefficients_in_closed_form() -> None:
    """VP: f = -beta/2, g^2 = beta; EDM: f = 0, g^2 = 2 t; flow: f = -1/(1 - t), g^2 = 2 t/(1 - t)."""
    vp, edm, flow = fewstep.VP(), fewstep.EDM(), fewstep.Flow()
    t = 0.3
    beta = vp.beta_min + t * (vp.beta_max - vp.beta_min)
    f, g2 = ReverseSDE.f_g2(*(float(v(t)) for v in (vp.alpha, vp.sigma, vp.dalpha, vp.dsigma)))
    assert f == pytest.approx(-beta / 2, rel=1e-12) and g2 == pytest.approx(beta, rel=1e-12)
    assert ReverseSDE(edm, 1.0).coefficients(2.0) == pytest.approx((0.0, 2.0 * 2.0 / 2.0, 2.0), rel=1e-12)
    c_x, c_eps, c_w = ReverseSDE(flow, 0.5).coefficients(t)
    assert c_x == pytest.approx(-1 / (1 - t)) and c_w == pytest.approx(0.5 * math.sqrt(2 * t / (1 - t)))
    assert c_eps == pytest.approx(0.5 * 1.25 * (2 * t / (1 - t)) / t)
    assert ReverseSDE.f_g2(0.0, 1.0, -1.0, 1.0) == (-math.inf, math.inf)  # alpha = 0: undefined
    with pytest.raises(ValueError, match="eta"):
        ReverseSDE(flow, -1.0)


# --- Euler-Maruyama's strong order on SDEs with known solutions ---------------------------------------------


class GBM:
    """dX = mu X dt + s X dW: X_T = X_0 exp((mu - s^2/2) T + s W_T) (multiplicative noise)."""

    mu, s = 1.0, 0.8

    def drift(self, x: Tensor, t: float) -> Tensor:
        return self.mu * x

    def diffusion(self, x: Tensor, t: float) -> Tensor:
        return self.s * x

    def exact(self, x: Tensor, w: Tensor, t: float) -> Tensor:
        return x * torch.exp((self.mu - self.s**2 / 2) * t + self.s * w)


class Additive:
    """dX = -theta X dt + c e^{-theta t} dW: d(e^{theta t} X) = c dW, X_T = e^{-theta T} (X_0 + c W_T)."""

    theta, c = 2.0, 1.0

    def drift(self, x: Tensor, t: float) -> Tensor:
        return -self.theta * x

    def diffusion(self, x: Tensor, t: float) -> float:
        return self.c * math.exp(-self.theta * t)

    def exact(self, x: Tensor, w: Tensor, t: float) -> Tensor:
        return math.exp(-self.theta * t) * (x + self.c * w)


@pytest.mark.parametrize(("sde", "order"), [(GBM(), 0.5), (Additive(), 1.0)])
def test_euler_maruyama_strong_order(sde: Any, order: float) -> None:
    """Measured 0.49 (GBM) and 1.01 (additive) over 16..128 steps, 512 paths of one BrownianPath."""
    path = BrownianPath((1,), seeds=7, batch_size=512, dtype=F64, tol=2.0**-10)
    x0 = torch.ones(512, 1, dtype=F64)
    exact = sde.exact(x0, path(1.0), 1.0)
    counts = [16, 32, 64, 128]
    errors = [rms(euler_maruyama(sde, x0, [k / n for k in range(n + 1)], path), exact) for n in counts]
    print(f"euler_maruyama strong order on {type(sde).__name__}: {slope(counts, errors):.2f}")
    assert abs(slope(counts, errors) - order) < 0.2, errors


def test_em_step() -> None:
    x, b, dw = randn(3, 2, seed=1), randn(3, 2, seed=2), randn(3, 2, seed=3)
    torch.testing.assert_close(em_step(x, b, -0.1, 0.5, dw), x - 0.1 * b + 0.5 * dw, rtol=0, atol=0)
    torch.testing.assert_close(em_step(x, b, 0.2), x + 0.2 * b, rtol=0, atol=0)


def gaussian_reverse_sde_solution(
    sched: fewstep.VP, eta: float, x: Tensor, path: BrownianPath, times: np.ndarray
) -> Tensor:
    """The pathwise solution of the family for GAUSS data, from times[0] to times[-1] (decreasing).

    In ``y = (x - alpha mu)/sqrt(v)`` (constant along the PF-ODE) the family is ``dy = (c^2/2) y dt + c dW_bar`` with
    ``c = eta g/sqrt(v)``, so with ``Lambda(u) = (eta^2/2) [log(v/alpha^2)]_{t_end}^u`` (since g^2/v = d log(v/alpha^2)
    /dt) ``y_end = e^{-Lambda(t_0)} y_0 + int h dW_bar``, ``h = e^{-Lambda} c``. The Itô integral of the deterministic
    h is summed over the intervals [a, b] of ``times`` as ``-(h(m) dW - h'(m) (b - a) H)`` (m the midpoint, H the
    path's space-time Lévy area; dW_bar = -dW over [a, b]), second order in the interval length."""
    mu, s0 = GAUSS.means[0].to(F64), float(GAUSS.stds[0])

    def alpha(u: float) -> float:
        return float(sched.alpha(u))

    def v(u: float) -> float:
        return alpha(u) ** 2 * s0**2 + float(sched.sigma(u)) ** 2

    def big_l(u: float) -> float:
        return math.log(v(u) / alpha(u) ** 2)

    t_end = float(times[-1])

    def h(u: float) -> float:
        g = ReverseSDE(sched, eta).diffusion(u)  # eta g
        return math.exp(-0.5 * eta**2 * (big_l(u) - big_l(t_end))) * g / math.sqrt(v(u))

    t0 = float(times[0])
    y = (x - alpha(t0) * mu) / math.sqrt(v(t0)) * math.exp(-0.5 * eta**2 * (big_l(t0) - big_l(t_end)))
    for b, a in zip(times[:-1], times[1:], strict=True):
        a, b = float(a), float(b)
        m, d = 0.5 * (a + b), 1e-6 * (b - a)
        dw, area = path.increment(a, b, levy_area=True)
        y = y - (h(m) * dw - (h(m + d) - h(m - d)) / (2 * d) * (b - a) * area)
    return alpha(t_end) * mu + math.sqrt(v(t_end)) * y


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_maruyama_solver_strong_order_on_the_exact_reverse_sde(eta: float) -> None:
    """``euler_maruyama`` (the registered solver) on VP with t-uniform steps, the noise from one BrownianPath in
    schedule time: strong order 1 (additive noise) against the exact pathwise solution (measured 0.98, 0.96)."""
    vp = fewstep.VP()
    batch, fine = 256, 256
    path = BrownianPath((2,), seeds=3, t0=vp.t_min, t1=vp.t_max, batch_size=batch, dtype=F64, tol=2.0**-12)
    sampler = brownian_noise_sampler(path, transform=lambda level: float(vp.t_of_level(level)))
    noise = randn(batch, 2, seed=4)
    model = GAUSS.model(vp, "epsilon")
    grid = np.linspace(vp.t_max, vp.t_min, fine + 1)
    exact = gaussian_reverse_sde_solution(vp, eta, noise, path, grid)
    counts = [16, 32, 64, 128]
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, vp, "euler_maruyama", spacing=torch.from_numpy(grid[:: fine // n].copy()), final="t_min",
            noise_sampler=sampler, eta=eta, progress=False,
        )  # fmt: skip
        errors.append(rms(out, exact))
    print(f"euler_maruyama (eta={eta}) strong order on the reverse SDE of a Gaussian: {slope(counts, errors):.2f}")
    assert abs(slope(counts, errors) - 1.0) < 0.2, errors
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))


# --- ER-SDE-Solver ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solver", "options", "order"),
    [
        ("er_sde_1", {}, 1),  # measured 0.95
        ("er_sde_2", {}, 2),  # measured 2.05
        ("er_sde_3", {}, 3),  # measured 3.07
        ("er_sde_3", {"d2_weight": "reference"}, 2),  # the paper's code: measured 2.22
    ],
)
def test_er_sde_order_on_the_probability_flow_ode(solver: str, options: dict, order: int) -> None:
    """phi(s) = s: no noise; the global error against the exact PF-ODE solution (VP, wide mixture, logSNR)."""
    vp = fewstep.VP()
    noise = randn(32, 2, seed=0)
    ref = reference_solution_from_time(WIDE, noise, vp, vp.t_max, vp.t_min)
    model = WIDE.model(vp, "epsilon")
    counts = [10, 20, 40, 80] if order < 3 else [20, 40, 80, 160]
    errors = []
    for n in counts:
        out = fewstep.sample(
            model, noise, vp, solver, steps=n, final="t_min", noise_scale="ode", lower_order_final=False, **options
        )
        errors.append(float((out - ref).abs().max()))
    print(f"{solver} {options} order on the PF-ODE: {slope(counts, errors):.2f}")
    assert abs(slope(counts, errors) - order) < 0.3, errors


@pytest.mark.parametrize(
    ("solver", "options"),
    [
        ("er_sde_1", {}),
        ("er_sde_2", {"lower_order_final": False}),
        ("er_sde_3", {"lower_order_final": False}),
        ("er_sde_3", {"lower_order_final": False, "noise_scale": "sde"}),
        ("euler_maruyama", {}),
    ],
)
def test_strong_convergence_to_the_fine_step_solution(solver: str, options: dict) -> None:
    """VP, wide mixture, logSNR grids nested in one of 1024 steps, one pre-drawn path: additive noise, strong
    order 1 (measured 1.00, 1.02, 1.00 and 1.06 (phi = s^2) for ER-SDE over 16..128 steps; euler_maruyama 1.01)."""
    vp, fine_n, batch = fewstep.VP(), 1024, 256
    fine = model_times(vp, fine_n + 1, "logsnr")
    path = FineBrownianPath((vp.sigma(fine) / vp.alpha(fine)).numpy(), batch, seed=0)
    noise = randn(batch, 2, seed=2)
    model = WIDE.model(vp, "epsilon")

    def solve(n: int) -> Tensor:
        return fewstep.sample(model, noise, vp, solver, spacing=fine[:: fine_n // n], final="t_min",
                              noise_sampler=path, progress=False, **options)  # fmt: skip

    reference = solve(fine_n)
    counts = [16, 32, 64, 128]
    errors = [rms(solve(n), reference) for n in counts]
    print(f"{solver} {options} strong order to the fine-step solution: {slope(counts, errors):.2f}")
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert slope(counts, errors) > 0.7, errors


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("er_sde_1", {"noise_scale": "sde"}), ("ddpm", {})),  # phi = s^2: the reverse SDE, DDPM's posterior step
        (("er_sde_1", {"noise_scale": "ode"}), ("ddim", {})),
        (("er_sde_2", {"noise_scale": lambda s: s * (torch.exp(s**0.3) + 10.0)}), ("er_sde_2", {})),
        (("pc_langevin", {"n_corrector": 0, "predictor": "ddpm"}), ("ddpm", {})),
    ],
)
def test_special_cases(a: tuple[str, dict], b: tuple[str, dict]) -> None:
    vp = fewstep.DiscreteVP.linear()
    model = TARGET.model(vp, "epsilon")
    noise = randn(16, 2, seed=1)
    nfe = 8
    outs = [
        fewstep.sample(model, noise, vp, name, nfe=nfe, generator=torch.Generator().manual_seed(5), **opts)
        for name, opts in (a, b)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)


def test_euler_maruyama_at_eta_0_is_euler_for_flows() -> None:
    """eta = 0: the drift is the velocity alpha' x0_hat + sigma' eps_hat, so EM in t is Euler in t."""
    flow = fewstep.Flow()
    model = TARGET.model(flow, "velocity")
    noise = randn(16, 2, seed=3)
    a = fewstep.sample(model, noise, flow, "euler_maruyama", nfe=9, prediction="velocity", eta=0.0)
    b = fewstep.sample(model, noise, flow, "euler", nfe=9, prediction="velocity")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --- predictor-corrector --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_corrector", [0, 1, 2, 3])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_pc_spends_exactly_nfe(n_corrector: int, final: str) -> None:
    vp = fewstep.VP()
    calls: list[float] = []
    model = TARGET.model(vp, "epsilon")
    denoiser = fewstep.Denoiser(lambda x, t: calls.append(float(t[0])) or model(x, t), vp, "epsilon")
    per = 1 + n_corrector
    for steps in (1, 2, 5):
        nfe = steps * per - n_corrector
        calls.clear()
        out = fewstep.sample(denoiser, randn(8, 2), solver="pc_langevin", nfe=nfe, final=final,  # type: ignore[arg-type]
                             n_corrector=n_corrector, generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert len(calls) == nfe and torch.isfinite(out).all()
        times = model_times(vp, steps if final == "zero" else steps + 1, "logsnr")
        # the predictor at node i, then the correctors at node i + 1 (none after the last step)
        expected = []
        for i in range(steps):
            expected.append(float(times[i]))
            if i + 1 < steps:
                expected += [float(times[i + 1])] * n_corrector
        assert calls == pytest.approx(expected, rel=1e-12)
    if n_corrector:
        with pytest.raises(ValueError, match="nfe"):
            bad = per
            fewstep.sample(model, randn(8, 2), vp, "pc_langevin", nfe=bad, final=final, n_corrector=n_corrector)


def test_pc_noise_intervals_are_disjoint_parts_of_each_step() -> None:
    """With a noise sampler, step i's level interval [l_{i+1}, l_i] is split in n_corrector + 1 equal parts:
    the corrector draws on the first ones, the predictor on the last."""
    vp = fewstep.VP()
    calls: list[tuple[float, float]] = []

    def sampler(s: float, t: float) -> Tensor:
        calls.append((s, t))
        return randn(4, 2, seed=len(calls))

    fewstep.sample(TARGET.model(vp, "epsilon"), randn(4, 2), vp, "pc_langevin", nfe=13, n_corrector=2,
                   noise_sampler=sampler)  # fmt: skip
    levels = (vp.sigma(model_times(vp, 5, "logsnr")) / vp.alpha(model_times(vp, 5, "logsnr"))).tolist()
    expected = []
    for i in range(4):  # 5 steps, the last (to sigma = 0) deterministic and without corrector
        hi, lo = levels[i], levels[i + 1]
        cut = [hi + (lo - hi) * k / 3 for k in range(4)]
        expected += [(cut[2], cut[3]), (cut[0], cut[1]), (cut[1], cut[2])]  # predictor first, then correctors
    assert calls == [pytest.approx(e, rel=1e-12) for e in expected]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pc_seed_promise() -> None:
    """``seed=`` promises per-sample noise: pc_langevin's default batch-mean norms break it, so the run is refused
    (before any model call) with the remedy; with norm='sample' a sample is the same in any batch."""
    vp = fewstep.VP()
    model = TARGET.model(vp, "epsilon")
    calls = []
    with pytest.raises(ValueError, match="seed: pc_langevin with norm='batch'.*use norm='sample'"):
        fewstep.sample(lambda x, t: calls.append(1) or model(x, t), randn(8, 2), vp, "pc_langevin", nfe=9, seed=3)
    assert not calls
    noise = randn(8, 2, seed=4)
    batch = fewstep.sample(model, noise, vp, "pc_langevin", nfe=9, seed=list(range(8)), norm="sample")
    alone = fewstep.sample(model, noise[5:6], vp, "pc_langevin", nfe=9, seed=[5], norm="sample")
    torch.testing.assert_close(batch[5:6], alone, rtol=1e-12, atol=1e-12)
    # the default, with a generator, still runs (its samples depend on the batch, as Song et al.'s)
    assert bool(torch.isfinite(fewstep.sample(model, noise, vp, "pc_langevin", nfe=9, generator=gen(1))).all())


def test_pc_distribution_and_option_checks() -> None:
    """More steps, closer to the data (sliced W2 on the 2-D mixture, Song et al.'s batch-mean norms)."""
    vp = fewstep.VP()
    model = TARGET.model(vp, "epsilon")
    n = 2048
    noise = randn(n, 2, seed=9)
    exact = TARGET.sample(n, torch.Generator().manual_seed(5))
    w = [
        sliced_wasserstein2(fewstep.sample(model, noise, vp, "pc_langevin", nfe=nfe, generator=gen(0)), exact)
        for nfe in (11, 51)
    ]
    assert w[1] < w[0] and w[1] < 0.15, w
    for options, error, name in [
        ({"n_corrector": -1}, ValueError, "n_corrector"),
        ({"n_corrector": 1.5}, ValueError, "n_corrector"),
        ({"snr": -0.1}, ValueError, "snr"),
        ({"predictor": "heun"}, ValueError, "predictor"),
        ({"predictor": "unipc_bh2"}, ValueError, "predictor"),
        ({"predictor": "dpmpp_2m", "predictor_options": {"corrector": "unic"}}, ValueError, "predictor"),
        ({"predictor": "pc_langevin"}, ValueError, "predictor"),
        ({"predictor": "nope"}, ValueError, "solver"),
        ({"predictor": 3}, TypeError, "predictor"),
        ({"norm": "l1"}, ValueError, "norm"),
        ({"predictor_options": {"eta": -1.0}}, ValueError, "eta"),
    ]:
        with pytest.raises(error, match=name):
            fewstep.solvers.get_solver("pc_langevin", **options)


def test_pc_predictor_options_and_trajectory_refusal() -> None:
    vp = fewstep.VP()
    model = TARGET.model(vp, "epsilon")
    noise = randn(8, 2)
    a = fewstep.sample(model, noise, vp, "pc_langevin", nfe=9, predictor="ddpm", predictor_options={"eta": 0.0},
                       n_corrector=0)  # fmt: skip
    torch.testing.assert_close(a, fewstep.sample(model, noise, vp, "ddim", nfe=9))
    with pytest.raises(NotImplementedError, match="Gaussian transition"):
        sample_with_logprob(model, noise, vp, "pc_langevin", nfe=9, seed=0)


# --- seeds, recorded transitions, options -------------------------------------------------------------------

SEEDED = [(name, {"norm": "sample"} if name == "pc_langevin" else {}) for name in NEW]


@pytest.mark.parametrize(("solver", "options"), SEEDED)
def test_a_batch_equals_its_samples_drawn_one_at_a_time(solver: str, options: dict) -> None:
    sched = fewstep.DiscreteVP.linear()
    model = TARGET.model(sched, "epsilon")
    noise = randn(8, 2, seed=1)
    seeds = [3, 17, 4, 99, 2**40, 0, 5, 6]

    def run(x: Tensor, seed: Any) -> Tensor:
        return fewstep.sample(model, x, sched, solver, nfe=9, seed=seed, **options)

    batch = run(noise, seeds)
    assert torch.equal(batch, torch.cat([run(noise[b : b + 1], [seeds[b]]) for b in range(8)]))
    assert torch.equal(batch, run(noise, seeds)) and not torch.allclose(batch, run(noise, [s + 1 for s in seeds]))


@pytest.mark.parametrize("solver", NEW[:4])
def test_recorded_transitions_and_replay(solver: str) -> None:
    sched = fewstep.DiscreteVP.linear()
    model = TARGET.model(sched, "epsilon")
    noise = randn(8, 2, seed=5)
    traj = sample_with_logprob(model, noise, sched, solver, nfe=8, seed=3)
    assert torch.equal(traj.sample, fewstep.sample(model, noise, sched, solver, nfe=8, seed=3))  # type: ignore[arg-type]
    assert traj.stochastic == [True] * 7 + [False]
    for i in range(7):
        mean, std, x_next, lp = traj.means[i], traj.stds[i], traj.states[i + 1], traj.log_probs[i]
        expected = torch.distributions.Normal(mean, std).log_prob(x_next).sum(1)
        torch.testing.assert_close(lp, expected, rtol=1e-10, atol=1e-10)
    again = sample_with_logprob(model, noise, sched, solver, nfe=8, noise_sampler=traj.replay())
    assert torch.equal(again.sample, traj.sample)  # type: ignore[arg-type]


@pytest.mark.parametrize("solver", NEW[:4])
def test_sde_window_without_steps_is_the_ode(solver: str) -> None:
    sched = fewstep.VP()
    model = TARGET.model(sched, "epsilon")
    noise = randn(8, 2, seed=6)
    ode_options = {"eta": 0.0} if solver == "euler_maruyama" else {"noise_scale": "ode"}
    ode = fewstep.sample(model, noise, sched, solver, nfe=8, **ode_options)
    windowed = fewstep.sample(model, noise, sched, solver, nfe=8, seed=1, sde_window=(-1.0, -2.0))
    torch.testing.assert_close(windowed, ode, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("solver", "options", "error", "name"),
    [
        ("euler_maruyama", {"eta": -0.5}, ValueError, "eta"),
        ("euler_maruyama", {"s_noise": "a"}, TypeError, "s_noise"),
        ("er_sde_2", {"noise_scale": "nope"}, ValueError, "noise_scale"),
        ("er_sde_2", {"noise_scale": 3}, TypeError, "noise_scale"),
        ("er_sde_3", {"d2_weight": "x"}, ValueError, "d2_weight"),
        ("er_sde_1", {"lower_order_final": 1}, TypeError, "lower_order_final"),
        ("er_sde_1", {"s_noise": -1.0}, ValueError, "s_noise"),
    ],
)
def test_options_are_validated(solver: str, options: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        fewstep.solvers.get_solver(solver, **options)


def test_a_noise_scale_that_adds_negative_variance_is_refused_before_any_model_call() -> None:
    vp = fewstep.VP()

    def model(x: Tensor, t: Tensor) -> Tensor:
        raise AssertionError("called")

    with pytest.raises(ValueError, match="noise_scale"):  # phi(s)/s = 1/s decreases
        fewstep.sample(model, randn(4, 2), vp, "er_sde_1", nfe=5, noise_scale=lambda s: torch.ones_like(s))


def test_pc_corrector_matches_diffusers_score_sde_ve_step_correct() -> None:
    """On EDM (alpha = 1, so a = 1 as for VE) with a DDIM predictor, each corrector step is diffusers'
    ``ScoreSdeVeScheduler.step_correct`` (Song et al.'s Langevin corrector, batch-mean norms) given the same
    draws; the reference loop is written here from the two updates."""
    diffusers = pytest.importorskip("diffusers")
    edm = fewstep.EDM()
    model = TARGET.model(edm, "sample")
    noise = 80.0 * randn(16, 2, seed=8)
    times = model_times(edm, 6, "karras")
    g0 = torch.Generator().manual_seed(3)  # diffusers draws float32 normals (randn_tensor's default dtype)
    out = fewstep.sample(model, noise, edm, "pc_langevin", spacing=times, prediction="sample", predictor="ddim",
                         n_corrector=2, snr=0.16, noise_sampler=lambda s, t: torch.randn(16, 2, generator=g0).double())  # fmt: skip
    scheduler = diffusers.ScoreSdeVeScheduler(snr=0.16)
    g = torch.Generator().manual_seed(3)
    x = noise.clone()
    sigmas = [*times.tolist(), 0.0]
    for i in range(len(times)):
        x0, eps = TARGET.denoise(x, 1.0, sigmas[i])
        x = x0 + sigmas[i + 1] * eps  # DDIM
        if sigmas[i + 1] > 0:
            for _ in range(2):
                x0, eps = TARGET.denoise(x, 1.0, sigmas[i + 1])
                x = scheduler.step_correct(-eps / sigmas[i + 1], x, generator=g).prev_sample
    print(f"relative difference to diffusers: {rel(out, x):.1e}")
    assert rel(out, x) < DIFFUSERS_RTOL  # observed 3e-8: diffusers' norms of its float32 noise are float32


def test_er_sde_steps_follow_the_paper_formulas() -> None:
    """EDM (alpha = 1, s = sigma), ER SDE 5, a recorded noise sequence: the paper's VE data-prediction updates
    (its code's ``ve_xstart`` steps), written here with phi itself and ``scipy.integrate.quad`` for the integrals:
    order 1 ``r x + (1 - r) D + sqrt(s_t^2 - s_s^2 r^2) z``; order 2 adds ``(s_t - s_s + phi_t int 1/phi) dD``;
    order 3 (``d2_weight="reference"``) ``((s_t - s_s)^2/2 + phi_t int (u - s_s)/phi) ddD``, with the backward
    differences ``dD = (D_i - D_{i-1})/(s_i - s_{i-1})``, ``ddD = 2 (dD_i - dD_{i-1})/(s_i - s_{i-2})``."""
    from scipy.integrate import quad

    edm = fewstep.EDM()
    model = TARGET.model(edm, "sample")
    noise = 80.0 * randn(8, 2, seed=11)
    times = model_times(edm, 7, "karras")
    draws = [randn(8, 2, seed=20 + k) for k in range(6)]

    def phi(u: float) -> float:
        return u * (math.exp(u**0.3) + 10.0)

    sig = [*times.tolist(), 0.0]
    for solver, options in [("er_sde_1", {}), ("er_sde_2", {}), ("er_sde_3", {"d2_weight": "reference"})]:
        it = iter(draws)
        out = fewstep.sample(model, noise, edm, solver, spacing=times, prediction="sample", lower_order_final=False,
                             noise_sampler=lambda s, t, it=it: next(it), **options)  # fmt: skip
        order = int(solver[-1])
        x, ds, dds = noise.clone(), [], []
        for i in range(len(times)):
            d = TARGET.denoise(x, 1.0, sig[i])[0]
            ds.insert(0, d)
            s_s, s_t = sig[i], sig[i + 1]
            if s_t == 0:
                x = d
                break
            r = phi(s_t) / phi(s_s)
            new = r * x + (1 - r) * d + math.sqrt(s_t**2 - s_s**2 * r**2) * draws[i]
            k = min(order, i + 1)
            if k >= 2:
                dds.insert(0, (ds[0] - ds[1]) / (s_s - sig[i - 1]))
                new = (
                    new
                    + (s_t - s_s + phi(s_t) * quad(lambda u: 1 / phi(u), s_t, s_s, epsabs=0, epsrel=1e-13)[0]) * dds[0]
                )
            if k >= 3:
                dd = 2 * (dds[0] - dds[1]) / (s_s - sig[i - 2])
                w = quad(lambda u, c=s_s: (u - c) / phi(u), s_t, s_s, epsabs=0, epsrel=1e-13)[0]
                new = new + ((s_t - s_s) ** 2 / 2 + phi(s_t) * w) * dd
            x = new
        torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("solver", NEW)
def test_gradients_flow_through_a_run(solver: str) -> None:
    """grad=True with a network that saves its input for backward (the corrector never overwrites a tensor the
    model has seen)."""
    vp = fewstep.VP()
    layer = torch.nn.Linear(2, 2).double()
    out = fewstep.sample(lambda x, t: 0.1 * layer(x), randn(4, 2), vp, solver, nfe=9, generator=gen(0), grad=True)
    out.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
