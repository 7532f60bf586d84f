"""Convergence orders of the Langevin integrators on linear (Gaussian-target) diffusions, against exact solutions.

* Strong orders: every refinement of the step is driven by one :class:`~fewstep.noise.BrownianPath`, and the
  reference is the exact solution of the linear SDE on that same path (its stochastic integral summed over a fine
  grid with the path's increments and space-time Lévy areas). Theory: ULA (Euler-Maruyama, additive noise) 1,
  BAOAB 1, OBABO 1, randomized midpoint 1.5.
* Weak orders: for a Gaussian target every step is affine in the state and the normals, so the exact law of the
  numerical solution is computed by driving the sampler with unit impulses (one chain per normal) instead of random
  noise; compared with the exact mean and covariance of the diffusion (``P - e^{BT} P e^{B^T T}``, ``P`` the
  stationary covariance). Theory: ULA 1, BAOAB 2, OBABO 2.
"""

from __future__ import annotations

import math

import pytest
import torch

import fewstep.langevin as L
from fewstep.noise.brownian import BrownianPath

A = torch.tensor([1.0, 4.0], dtype=torch.float64)  # target N(0, diag(1/A)): the drift is the OU process -A x
GAMMA = 1.0
X0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
V0 = torch.tensor([0.5, 1.0], dtype=torch.float64)
KINETIC = ["baoab", "obabo", "randomized_midpoint"]


def _target() -> L.Target:
    return L.Target.from_log_prob(lambda x: -0.5 * (A * x * x).sum(-1))


def _drift_matrices() -> torch.Tensor:
    """``B_i = [[0, 1], [-a_i, -gamma]]`` per coordinate ``[d, 2, 2]`` (the (x, v) system decouples)."""
    b = torch.zeros(len(A), 2, 2, dtype=torch.float64)
    b[:, 0, 1] = 1.0
    b[:, 1, 0] = -A
    b[:, 1, 1] = -GAMMA
    return b


def _slope(steps: list[float], errors: list[float]) -> float:
    """Least-squares slope of log error against log step."""
    x = torch.tensor(steps, dtype=torch.float64).log()
    y = torch.tensor(errors, dtype=torch.float64).log()
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# ----------------------------------------------------------------------------------------------------- strong order


def _exact_on_path(path: BrownianPath, t_end: float, fine: int, kinetic: bool) -> torch.Tensor:
    """``x(T)`` of the exact solution driven by ``path``: ``z(T) = e^{BT} z0 + int_0^T f(s) dW_s`` with
    ``f(s) = e^{B(T - s)} S``, each fine interval contributing ``f(m) dW - tau f'(m) H`` (``m`` its midpoint; the
    Lévy-area term is the exact part linear in ``s - m``)."""
    chains = path.batch_size
    tau = t_end / fine
    if kinetic:
        b = _drift_matrices()
        s = torch.tensor([0.0, math.sqrt(2.0 * GAMMA)], dtype=torch.float64)
        z0 = torch.stack([X0, V0], -1)  # [d, 2]
        x = (torch.linalg.matrix_exp(b * t_end) @ z0[..., None])[:, 0, 0].expand(chains, -1).clone()
        mids = (torch.arange(fine, dtype=torch.float64) + 0.5) * tau
        f = torch.linalg.matrix_exp(b[None] * (t_end - mids)[:, None, None, None]) @ s  # [fine, d, 2]
        fx, dfx = f[..., 0], -(b[None] @ f[..., None])[..., 0, 0]  # x-components of f and f' = -B f
    else:
        x = (torch.exp(-A * t_end) * X0).expand(chains, -1).clone()
        mids = (torch.arange(fine, dtype=torch.float64) + 0.5) * tau
        fx = math.sqrt(2.0) * torch.exp(-A * (t_end - mids[:, None]))
        dfx = A * fx
    for j in range(fine):
        dw, area = path.increment(j * tau, (j + 1) * tau, levy_area=True)
        x = x + fx[j] * dw - tau * dfx[j] * area
    return x


def test_strong_orders_on_one_brownian_path() -> None:
    t_end, chains = 1.0, 48
    path = BrownianPath((2,), 2026, 0.0, t_end, batch_size=chains, dtype=torch.float64)
    exact_ou = _exact_on_path(path, t_end, 256, kinetic=False)
    exact_kin = _exact_on_path(path, t_end, 256, kinetic=True)
    x0 = X0.expand(chains, -1).clone()
    v0 = V0.expand(chains, -1).clone()
    counts = [4, 8, 16, 32, 64]
    theory = {"ula": 1.0, "baoab": 1.0, "obabo": 1.0, "randomized_midpoint": 1.5}
    measured = {}
    for name in theory:
        errors = []
        for n in counts:
            repeats = 8 if name == "randomized_midpoint" else 1  # average over the random midpoints
            sq = 0.0
            for r in range(repeats):
                options = {"adapt_mass": False, "velocity": v0} if name in KINETIC else {}
                run = L.sample(
                    _target(),
                    name,
                    x0,
                    draws=n,
                    step_size=t_end / n,
                    generator=torch.Generator().manual_seed(r),
                    brownian=path,
                    **options,
                )
                reference = exact_kin if name in KINETIC else exact_ou
                sq += float(((run.draws[:, -1] - reference) ** 2).sum(-1).mean())
            errors.append(math.sqrt(sq / repeats))
        measured[name] = _slope([t_end / n for n in counts[1:]], errors[1:])
    print("\nstrong order (theory, measured):", {n: (theory[n], round(m, 2)) for n, m in measured.items()})
    for name, order in theory.items():
        # the randomized midpoint's error is C1 h^1.5 (the random quadrature) + C2 h^2: over these steps its slope
        # lies between, near 1.65; it tends to 1.5 on finer steps (1/256: 1.5)
        tol = 0.3 if name == "randomized_midpoint" else 0.2
        assert abs(measured[name] - order) < tol, (name, measured)


def test_path_refinements_share_the_path() -> None:
    """Halving the step on one path changes ULA's end point by O(h), far less than another path does."""
    t_end, chains = 1.0, 64
    x0 = X0.expand(chains, -1).clone()
    ends = []
    for seed, n in [(1, 32), (1, 64), (2, 64)]:
        path = BrownianPath((2,), seed, 0.0, t_end, batch_size=chains, dtype=torch.float64)
        run = L.sample(_target(), "ula", x0, draws=n, step_size=t_end / n, brownian=path)
        ends.append(run.draws[:, -1])
    same = float((ends[0] - ends[1]).norm(dim=-1).mean())
    other = float((ends[1] - ends[2]).norm(dim=-1).mean())
    assert same < 0.1 * other


# ------------------------------------------------------------------------------------------------------- weak order


class ImpulsePath(BrownianPath):
    """A stand-in for a Brownian path whose ``q``-th query gives chain ``1 + (2q + j) d + i`` the unit normal
    ``xi_j = 1`` in component ``i`` (``xi_0`` the increment, ``xi_1`` the Lévy area) and every other chain zero;
    chain 0 sees no noise. For an affine scheme, chain 0 then ends at the mean and the other chains at the columns
    of the noise-to-state map, whose squares sum to the covariance."""

    def __init__(self, d: int, queries: int, t_end: float) -> None:
        super().__init__((d,), 0, 0.0, t_end, batch_size=1 + 2 * queries * d, dtype=torch.float64)
        self.queries = 0

    def increment(self, s, t, levy_area=False):  # type: ignore[no-untyped-def, override]
        tau = float(t) - float(s)
        d = self.shape[0]
        dw = torch.zeros(self.batch_size, d, dtype=torch.float64)
        area = torch.zeros_like(dw)
        base = 1 + 2 * self.queries * d
        idx = torch.arange(d)
        dw[base + idx, idx] = math.sqrt(tau)
        area[base + d + idx, idx] = -math.sqrt(tau / 12.0)  # so that the normalised xi_h is +1
        self.queries += 1
        return (dw, area) if levy_area else dw


def _exact_second_moment(t_end: float, kinetic: bool) -> float:
    """``E |x(T)|^2`` of the diffusion from ``(X0, V0)``."""
    if not kinetic:
        mean = torch.exp(-A * t_end) * X0
        return float((mean**2 + (1.0 - torch.exp(-2.0 * A * t_end)) / A).sum())
    total = 0.0
    for b, a, x, v in zip(_drift_matrices(), A, X0, V0, strict=True):
        e = torch.linalg.matrix_exp(b * t_end)
        mean = e @ torch.stack([x, v])
        p = torch.diag(torch.stack([1.0 / a, torch.ones((), dtype=torch.float64)]))
        total += float(mean[0] ** 2 + (p - e @ p @ e.T)[0, 0])
    return total


def _numerical_second_moment(name: str, n: int, t_end: float) -> float:
    queries_per_step = 2 if name == "obabo" else 1
    path = ImpulsePath(len(A), queries_per_step * n, t_end)
    x0 = torch.zeros(path.batch_size, len(A), dtype=torch.float64)
    v0 = torch.zeros_like(x0)
    x0[0], v0[0] = X0, V0
    options = {"adapt_mass": False, "velocity": v0} if name in KINETIC else {}
    run = L.sample(_target(), name, x0, draws=n, step_size=t_end / n, brownian=path, **options)
    assert path.queries == queries_per_step * n
    end = run.draws[:, -1]
    return float((end**2).sum())


@pytest.mark.parametrize(("name", "order"), [("ula", 1.0), ("baoab", 2.0), ("obabo", 2.0)])
def test_weak_orders_exact_law(name: str, order: float) -> None:
    t_end = 2.0
    exact = _exact_second_moment(t_end, kinetic=name in KINETIC)
    counts = [8, 16, 32, 64]
    errors = [abs(_numerical_second_moment(name, n, t_end) - exact) for n in counts]
    measured = _slope([t_end / n for n in counts[1:]], errors[1:])
    print(f"\nweak order of {name}: theory {order}, measured {measured:.2f}")
    assert abs(measured - order) < 0.2, errors
