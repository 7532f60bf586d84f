"""The randomized midpoint method's ESS per gradient on the 100-D rotated Gaussian, computed exactly from the warm-up's
adapted step, friction and diagonal mass: what limits it, and how the warm-up's length changes it.

On a Gaussian target every kinetic step is linear, so its chains' autocorrelations are known in closed form. In the
coordinates ``y = M^{1/2} x`` whitened by the diagonal inverse mass ``M^{-1}`` the target's precision is
``M^{-1/2} P M^{-1/2}``; its eigenvectors decouple the chain into harmonic modes of frequencies ``omega_i``, each a
2-D linear recursion ``z_{k+1} = A(u_k) z_k + xi_k`` in ``z = (y, w)``. For the randomized midpoint step (Shen & Lee
2019; Yu, Karagulyan & Dalalyan 2023; :mod:`fewstep.langevin.kinetic`) with ``tau = u h``,
``phi1(t) = (1 - e^{-gamma t}) / gamma`` and ``F(y) = -omega^2 y``:

    y_mid = (1 - phi2(tau) omega^2) y + phi1(tau) w + sqrt(2 gamma) int_0^tau phi1(tau - s) dW_s
    y'    = y + phi1(h) w - h phi1(h - tau) omega^2 y_mid + sqrt(2 gamma) int_0^h phi1(h - s) dW_s
    w'    = e^{-gamma h} w - h e^{-gamma (h - tau)} omega^2 y_mid + sqrt(2 gamma) int_0^h e^{-gamma (h - s)} dW_s

The stationary covariance solves ``S = E_u[A S A^T + Q(u)]`` (``u ~ U(0, 1)`` by 48-point Gauss-Legendre, the noise
covariance ``Q`` by quadrature of the kernels above), the lag-``n`` autocovariance is ``E[A]^n S`` (``u`` drawn
afresh each step), the chain is mean-square stable when the spectral radius of ``E[A kron A]`` is below 1, and a
coordinate ``x_j`` mixes the modes with weights ``(M^{-1/2} U)_{ji}^2``. The ESS reported by the benchmark (Geyer's
initial monotone sequence, :mod:`fewstep.langevin.diagnostics`) drops the negative autocorrelations of the
underdamped modes, so the script applies that truncation to the exact autocorrelations: what the estimator converges
to. Checked against the measured table of docs/langevin.md (variance mass, warm-up 500): BAOAB 0.0057 against
0.0058 measured, the randomized midpoint 0.0028 against 0.0029.

    python benchmarks/langevin_rm_analysis.py                   # warm-ups 500 ... 5000, seeds 0-3
    python benchmarks/langevin_rm_analysis.py --warmups 500 5000 --seeds 0 1
    python benchmarks/langevin_rm_analysis.py --warmups 500 --seeds 0 --grid   # friction x step at that mass

Writes benchmarks/results/langevin_rm_analysis.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.polynomial.legendre import leggauss

from fewstep.bench.targets.densities import density_target
from fewstep.langevin import sample

RESULTS = Path(__file__).parent / "results"
_KERNEL_X, _KERNEL_W = leggauss(24)
_U_X, _U_W = leggauss(48)
U_NODES, U_WEIGHTS = 0.5 * (_U_X + 1.0), 0.5 * _U_W


def phi1(t: np.ndarray | float, gamma: float) -> np.ndarray:
    return -np.expm1(-gamma * np.asarray(t)) / gamma


def midpoint_map(w2: np.ndarray, h: float, gamma: float, u: float) -> tuple[np.ndarray, np.ndarray]:
    """The randomized midpoint step's matrix ``A`` ``[n, 2, 2]`` and noise covariance ``Q`` ``[n, 2, 2]`` on modes
    of squared frequencies ``w2``, for the midpoint fraction ``u``."""
    tau = u * h
    p1 = phi1(tau, gamma)
    p2 = (tau - p1) / gamma
    a, b = h * phi1(h - tau, gamma), h * np.exp(-gamma * (h - tau))
    mid_y, mid_w = 1.0 - p2 * w2, p1
    A = np.empty((*w2.shape, 2, 2))
    A[:, 0, 0], A[:, 0, 1] = 1.0 - a * w2 * mid_y, phi1(h, gamma) - a * w2 * mid_w
    A[:, 1, 0], A[:, 1, 1] = -b * w2 * mid_y, np.exp(-gamma * h) - b * w2 * mid_w
    Q = np.zeros_like(A)
    for lo, hi, inside in ((0.0, tau, True), (tau, h, False)):
        s = 0.5 * (hi - lo) * _KERNEL_X + 0.5 * (hi + lo)
        ds = 0.5 * (hi - lo) * _KERNEL_W
        mid = phi1(tau - s, gamma)[None, :] if inside else 0.0
        ky = phi1(h - s, gamma)[None, :] - (a * w2)[:, None] * mid
        kw = np.exp(-gamma * (h - s))[None, :] - (b * w2)[:, None] * mid
        Q[:, 0, 0] += (ky * ky * ds).sum(-1)
        Q[:, 0, 1] += (ky * kw * ds).sum(-1)
        Q[:, 1, 1] += (kw * kw * ds).sum(-1)
    Q[:, 1, 0] = Q[:, 0, 1]
    return A, 2.0 * gamma * Q


def baoab_map(w2: np.ndarray, h: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """BAOAB's matrix and noise covariance on the same modes (the noise enters the velocity at the O step)."""
    n = w2.shape[0]

    def kick(t: float) -> np.ndarray:
        m = np.tile(np.eye(2), (n, 1, 1))
        m[:, 1, 0] = -t * w2
        return m

    drift = np.tile(np.array([[1.0, 0.5 * h], [0.0, 1.0]]), (n, 1, 1))
    ou = np.tile(np.diag([1.0, np.exp(-gamma * h)]), (n, 1, 1))
    after = kick(0.5 * h) @ drift
    noise_col = after[:, :, 1:2]
    return after @ ou @ drift @ kick(0.5 * h), noise_col @ noise_col.swapaxes(-1, -2) * (1.0 - np.exp(-2 * gamma * h))


@dataclass(frozen=True)
class Exact:
    """Per coordinate: the Geyer-truncated and the full integrated autocorrelation time, the stationary variance
    over the target's; and the mean-square spectral radius of the step (unstable at 1 or above)."""

    iact_geyer: np.ndarray
    iact_full: np.ndarray
    variance_ratio: np.ndarray
    radius: float


def exact(sigma: np.ndarray, inverse_mass: np.ndarray, h: float, gamma: float, scheme: str, lags: int) -> Exact:
    root = np.sqrt(inverse_mass)
    w2, vecs = np.linalg.eigh(root[:, None] * np.linalg.inv(sigma) * root[None, :])
    n = w2.shape[0]
    if scheme == "randomized_midpoint":
        terms = [(wu, *midpoint_map(w2, h, gamma, u)) for u, wu in zip(U_NODES, U_WEIGHTS, strict=True)]
    else:
        terms = [(1.0, *baoab_map(w2, h, gamma))]
    kron = sum(wu * np.einsum("nij,nkl->nikjl", A, A).reshape(n, 4, 4) for wu, A, _ in terms)
    noise = sum(wu * Q.reshape(n, 4) for wu, _, Q in terms)
    radius = float(np.abs(np.linalg.eigvals(kron)).max())
    S = np.linalg.solve(np.eye(4)[None] - kron, noise[..., None])[..., 0].reshape(n, 2, 2)
    mean_map = sum(wu * A for wu, A, _ in terms)
    weights = (root[:, None] * vecs) ** 2  # coordinate j's share of mode i
    acov = np.empty((lags, n))
    cur = S
    for k in range(lags):
        acov[k] = weights @ cur[:, 0, 0]
        cur = mean_map @ cur
    rho = acov / acov[0]
    return Exact(geyer(rho), 1.0 + 2.0 * rho[1:].sum(0), acov[0] / np.diag(sigma), radius)


def geyer(rho: np.ndarray) -> np.ndarray:
    """Geyer's initial monotone sequence on autocorrelations ``rho`` ``[lags, d]``: the IACT per column."""
    even = rho.shape[0] // 2 * 2
    pairs = rho[0:even:2] + rho[1:even:2]
    out = np.empty(rho.shape[1])
    for j in range(rho.shape[1]):
        stop = np.flatnonzero(pairs[:, j] <= 0.0)
        kept = pairs[: stop[0] if stop.size else pairs.shape[0], j]
        out[j] = -1.0 + 2.0 * np.minimum.accumulate(kept).sum()
    return out


def grid(density: object, sigma: np.ndarray, warmup: int, seed: int, lags: int) -> list[str]:
    """The randomized midpoint's exact ESS per gradient over frictions ``c omega_min`` and steps ``c' / omega_max``
    at the mass the warm-up adapted; ``-`` where the step is mean-square unstable."""
    x0 = density.initial(4, torch.Generator().manual_seed(seed))  # type: ignore[attr-defined]
    run = sample(
        density.target(), "randomized_midpoint", x0, draws=1, warmup=warmup,  # type: ignore[attr-defined]
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert run.inverse_mass is not None
    m = run.inverse_mass.numpy()
    root = np.sqrt(m)
    w2 = np.linalg.eigvalsh(root[:, None] * np.linalg.inv(sigma) * root[None, :])
    w_min, w_max = float(np.sqrt(w2.min())), float(np.sqrt(w2.max()))
    steps = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
    lines = [
        f"warm-up {warmup}, seed {seed}: ESS bulk / grad (max var bias) of the randomized midpoint; rows friction "
        "/ omega_min, columns h omega_max",
        "",
        "| friction / omega_min | " + " | ".join(f"{c}" for c in steps) + " |",
        "|---:|" + "---:|" * len(steps),
    ]
    for scale in (0.5, 0.7, 1.0, 1.5, 2.0, 3.0):
        cells = []
        for c in steps:
            e = exact(sigma, m, c / w_max, scale * w_min, "randomized_midpoint", lags)
            bias = float(np.abs(e.variance_ratio - 1.0).max())
            cells.append("-" if e.radius >= 1.0 else f"{1.0 / (2.0 * e.iact_geyer.max()):.4f} ({bias:.2f})")
        lines.append(f"| {scale} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmups", type=int, nargs="*", default=[500, 1000, 2000, 5000])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--budget", type=int, default=108870, help="gradients per chain (NUTS's at warm-up 500)")
    parser.add_argument("--lags", type=int, default=8000)
    parser.add_argument(
        "--grid", action="store_true", help="also search friction x step at the first warm-up's and seed's mass"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "langevin_rm_analysis.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    density = density_target("gaussian", 100)
    assert density.rotation is not None
    rot, var = density.rotation.numpy(), density.variances.numpy()
    sigma = rot @ np.diag(var) @ rot.T
    header = (
        "| warm-up | seed | omega_max / omega_min | friction | h omega_max (chains) | mean-square radius | "
        "ESS bulk / grad (RM) | ESS bulk / grad (RM, no truncation) | max var bias (RM) | ESS bulk / grad (BAOAB) |\n"
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    print(header)
    for warmup in args.warmups:
        for seed in args.seeds:
            x0 = density.initial(4, torch.Generator().manual_seed(seed))
            run = sample(
                density.target(), "randomized_midpoint", x0, draws=1, warmup=warmup,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            assert run.inverse_mass is not None and run.friction is not None
            m, gamma = run.inverse_mass.numpy(), float(run.friction)
            steps = np.atleast_1d(np.asarray(run.step_size, dtype=float))
            root = np.sqrt(m)
            w2 = np.linalg.eigvalsh(root[:, None] * np.linalg.inv(sigma) * root[None, :])
            kept = (args.budget - warmup) / args.budget  # the warm-up's gradients count in the budget
            rm = [exact(sigma, m, h, gamma, "randomized_midpoint", args.lags) for h in steps]
            ba = [exact(sigma, m, h, gamma, "baoab", args.lags) for h in steps]
            # the pooled chains' ESS: each chain's draws over its IACT, two gradients a step
            ess_rm = kept * np.mean([1.0 / (2.0 * e.iact_geyer.max()) for e in rm])
            ess_rm_full = kept * np.mean([1.0 / (2.0 * e.iact_full.max()) for e in rm])
            ess_ba = kept * np.mean([1.0 / e.iact_geyer.max() for e in ba])
            bias = max(float(np.abs(e.variance_ratio - 1.0).max()) for e in rm)
            line = (
                f"| {warmup} | {seed} | {np.sqrt(w2.max() / w2.min()):.1f} | {gamma:.3f} | "
                f"{', '.join(f'{h * np.sqrt(w2.max()):.2f}' for h in steps)} | {max(e.radius for e in rm):.4f} | "
                f"{ess_rm:.4f} | {ess_rm_full:.4f} | {bias:.3f} | {ess_ba:.4f} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.grid:
        lines += ["", *grid(density, sigma, args.warmups[0], args.seeds[0], args.lags)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "gaussian_100d_cond1000: exact ESS per gradient from the adapted warm-up "
        "(python benchmarks/langevin_rm_analysis.py)\n\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
