"""The SMC engine against exact targets: TDS on linear-Gaussian posteriors and FK steering on a quadratic-reward tilt.

**TDS** (``fewstep.posterior.smc.TDS``) at NFE 20 per particle (DDPM proposal, logSNR spacing), K = 1, 4, 16, 64
particles per prompt, ``--replicates`` replicates of ``--prompts`` prompts each, on

- ``2d``: the default 2-D mixture, observing the first coordinate, ``y = 1.4``, noise 0.3; the network is the
  differentiable exact denoiser (``as_full_covariance(mixture).model``), so the twist's gradient goes through it;
- ``64d``: the 64-D mixture (200 modes), a random 16 x 64 Gaussian operator (entries N(0, 1/64)), noise 0.3, the
  observation made from one prior sample; the network is the mixture's own exact denoiser, which detaches its
  input: the twist's gradient is then the conversion's explicit part (``x0_hat = (x - sigma eps_hat) / alpha``
  with ``eps_hat`` held), a Jacobian-free twist (the weights stay exact).

The metric is the component-weight error: the total variation between the exact posterior's component weights
(``fewstep.bench.targets.posterior.mixture_posterior``) and the particles' weighted estimate
``sum_k w_k r(x_k)`` (``r``: the exact posterior's responsibilities), per prompt. The reference row is the same
metric for K exact posterior samples, equally weighted. "within 3 SE" compares the K = 64 mean with the reference
mean, with the standard error of their difference over all prompts of all replicates.

**FK steering** (``FKSteering(r, 1, kind)``) for ``r(x) = -|x|^2/2 + 2 x_1`` on the 2-D mixture: the mean reward
(weighted) for K = 1, 2, 4, 8 against plain sampling with the proposal's solver (``dpmpp_2m_sde``) at the same NFE
per particle and the exact tilt
``p(x) exp(r(x))`` (``reward_tilt``, 10^5 exact samples), and the fraction of the gap closed.

Usage: ``python benchmarks/posterior_smc.py [--replicates 5] [--prompts 64] [--targets 2d,64d] [--nfe 20] [--no-fk]
[--jacobian-free]``.
About 5 minutes on a shared 2-core machine with the defaults (the 64-D K = 64 row takes 2 of them).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

import fewstep
from fewstep.bench.targets import mixture_2d, mixture_nd
from fewstep.bench.targets.posterior import as_full_covariance, mixture_posterior, reward_tilt
from fewstep.posterior import Linear
from fewstep.posterior.smc import TDS, FKSteering, smc

F64 = torch.float64
SCHED = fewstep.VP()
PARTICLES = (1, 4, 16, 64)


def problem(
    name: str, jacobian_free: bool = False
) -> tuple[fewstep.bench.targets.GaussianMixture, Linear, Callable[..., torch.Tensor]]:
    """The prior, the measurement and the network: the differentiable exact denoiser in 2-D (TDS's gradient through
    the network), the isotropic mixture's own in 64-D (it detaches its input: the gradient is the conversion's
    explicit part only, a Jacobian-free twist, for speed; ``jacobian_free`` picks it in 2-D too)."""
    if name == "2d":
        mix = mixture_2d()
        meas = Linear(y=torch.tensor([[1.4]], dtype=F64), noise_std=0.3, A=torch.tensor([[1.0, 0.0]], dtype=F64))
        model = mix.model(SCHED, "epsilon") if jacobian_free else as_full_covariance(mix).model(SCHED, "epsilon")
        return mix, meas, model
    mix = mixture_nd()
    g = torch.Generator().manual_seed(7)
    a = torch.randn(16, mix.dim, generator=g, dtype=F64) / math.sqrt(mix.dim)
    x = mix.sample(1, generator=g)
    y = x @ a.T + 0.3 * torch.randn(1, 16, generator=g, dtype=F64)
    return mix, Linear(y=y, noise_std=0.3, A=a), mix.model(SCHED, "epsilon")


def tds_table(name: str, replicates: int, prompts: int, nfe: int = 20, jacobian_free: bool = False) -> None:
    mix, meas, model = problem(name, jacobian_free)
    post = mixture_posterior(mix, meas)
    exact = torch.softmax(post.log_weights, 0)
    print(f"\n### TDS, {name}: component-weight error (TV) at NFE {nfe}, {replicates} x {prompts} prompts\n")
    print("| K | TDS error (mean ± SE) | exact samples (mean ± SE) | network calls | backward passes | seconds |")
    print("|---|---|---|---|---|---|")
    for k in PARTICLES:
        errs, refs = [], []
        calls = fewstep.CallCount()
        start = time.perf_counter()
        for rep in range(replicates):
            g = torch.Generator().manual_seed(1000 * rep + k)
            noise = torch.randn(prompts, k, mix.dim, generator=g, dtype=F64)
            rep_calls = fewstep.CallCount()
            r = smc(model, noise, SCHED, TDS(meas), nfe=nfe, generator=g, calls=rep_calls)
            calls.add(rep_calls)
            resp = post.responsibilities(r.samples.reshape(prompts * k, -1)).reshape(prompts, k, -1)
            errs.append(((r.weights[..., None] * resp).sum(1) - exact).abs().sum(1) / 2)
            xs = post.sample(prompts * k, generator=torch.Generator().manual_seed(5000 + 1000 * rep + k))
            ref = post.responsibilities(xs).reshape(prompts, k, -1).mean(1)
            refs.append((ref - exact).abs().sum(1) / 2)
        seconds = time.perf_counter() - start
        e, ref = torch.cat(errs), torch.cat(refs)
        n = e.numel()
        se_e, se_r = float(e.std()) / math.sqrt(n), float(ref.std()) / math.sqrt(n)
        print(
            f"| {k} | {float(e.mean()):.4f} ± {se_e:.4f} | {float(ref.mean()):.4f} ± {se_r:.4f} | "
            f"{calls.network // replicates} | {calls.backward // replicates} | {seconds:.1f} |"
        )
        if k == PARTICLES[-1]:
            gap = float(e.mean()) - float(ref.mean())
            within = gap <= 3 * math.hypot(se_e, se_r)
            print(f"\nK = {k}: TDS - exact = {gap:+.4f}, 3 SE = {3 * math.hypot(se_e, se_r):.4f}: within = {within}")


def fk_table(prompts: int) -> None:
    mix = mixture_2d()
    model = mix.model(SCHED, "epsilon")
    b_vec = torch.tensor([2.0, 0.0], dtype=F64)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * x.square().sum(1) + x @ b_vec.to(x)

    tilt = reward_tilt(mix, torch.eye(2, dtype=F64), b_vec, 1.0)
    exact = float(reward(tilt.sample(100_000, generator=torch.Generator().manual_seed(0))).mean())
    base = torch.randn(prompts * 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    plain_x = fewstep.sample(model, base, SCHED, "dpmpp_2m_sde", nfe=20, generator=torch.Generator().manual_seed(2))
    plain = float(reward(plain_x).mean())
    print(f"\n### FK steering, 2d, r(x) = -|x|^2/2 + 2 x_1, NFE 20 per particle, {prompts * 4} prompts\n")
    print(
        f"plain sampling (dpmpp_2m_sde, the proposal) mean reward {plain:.4f}; exact tilted mean reward {exact:.4f}\n"
    )
    print("| potential | K | mean reward | gap closed |")
    print("|---|---|---|---|")
    for kind in ("difference", "max", "sum"):
        for k in (1, 2, 4, 8):
            noise = torch.randn(prompts * 4, k, 2, generator=torch.Generator().manual_seed(3 + k), dtype=F64)
            r = smc(
                model, noise, SCHED, FKSteering(reward, 1.0, kind), nfe=20, generator=torch.Generator().manual_seed(k)
            )
            steered = float(r.expectation(reward(r.samples.reshape(-1, 2)).reshape(-1, k)).mean())
            print(f"| {kind} | {k} | {steered:.4f} | {(steered - plain) / (exact - plain):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--targets", default="2d,64d")
    parser.add_argument("--nfe", type=int, default=20, help="network calls per particle of the TDS runs")
    parser.add_argument("--no-fk", action="store_true", help="leave the FK steering table out")
    parser.add_argument("--jacobian-free", action="store_true", help="2d: the mixture's own (detaching) denoiser")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    for name in filter(None, args.targets.split(",")):
        tds_table(name, args.replicates, args.prompts, args.nfe, args.jacobian_free)
    if not args.no_fk:
        fk_table(args.prompts)


if __name__ == "__main__":
    main()
