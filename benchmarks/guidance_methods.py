"""The state-moving guidance methods and self-guidance against exact answers on Gaussian mixtures (VP schedule).

Three measurements, each a distance between sample sets (1-D Wasserstein-1 between quantiles, or its average over
fixed random directions, "sliced W1", for 64-D), with the distance between two exact sample sets of the same sizes
as the noise floor:

1. **Bidirectional** (ViBiDSampler, ``fewstep.guidance.Bidirectional``): classes 0 and 1 of ``labelled_2d`` and of
   ``labelled_64d`` as the two passes' conditions, ``ddim`` on ``logsnr`` times with ``h`` the run's step. The
   exact answer is the law of the reverse SDE whose score is the average of the two conditionals' scores
   (the rule's small-step limit, :mod:`fewstep.guidance.bidirectional`), computed by ``ddpm`` at 400 steps with
   ``Superposition(mode="sum")`` of the two (its distance to the 200-step solve is reported). Against it: the
   rule, and ``ddpm`` with that superposition at the same number of network calls.
2. **Conditioning on known coordinates**: the unconditional mixtures, coordinate 0 of ``labelled_2d`` observed at
   0.5 and the first 32 coordinates of ``labelled_64d`` observed at a sample's values; the exact answer is the
   mixture posterior (``fewstep.bench.targets.posterior.mixture_posterior``). Methods: COW's one-way replacement
   (``OneWayDiffusion`` with ``ddim``), with cycles (``cyclic_sample``), DDNM-style replacement of ``x0_hat``
   (``fewstep.posterior.Projection``) as a reference point, and TSDiff's self-guidance (``SelfGuidance``,
   without the network's Jacobian) on the same observation with noise 0.1 (exact answer: that measurement's
   posterior), at the plug-in scale ``1/r^2`` and at the Gaussian-exact scale ``1/(C(sigma) + r^2)``.
3. **Self-recurrence** (universal guidance, ``SelfRecurrence``): ``labelled_2d`` class 0 unguided (its exact law is
   the class's mixture), ``ddim`` with ``repeats`` 1, 2, 3, against plain ``ddim`` at the same network calls.

Results go to ``benchmarks/results/guidance_methods.json``; the tables are printed. Usage:
``python benchmarks/guidance_methods.py``. The last run took 25 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import fewstep
from fewstep.bench.output import atomic_write_text
from fewstep.bench.targets import labelled_mixture_2d, labelled_mixture_nd
from fewstep.bench.targets.posterior import mixture_posterior
from fewstep.guidance import Bidirectional, OneWayDiffusion, SelfGuidance, SelfRecurrence, Superposition
from fewstep.guidance.cyclic import cyclic_sample
from fewstep.guidance.loss_steps import posterior_variance
from fewstep.posterior import Mask, Projection

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "guidance_methods.json"
F64 = torch.float64
VP = fewstep.VP()
QUANTILES = torch.linspace(0.0025, 0.9975, 400, dtype=F64)
DIRECTIONS = 32
REFERENCE_STEPS = 400


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, dim: int, seed: int) -> Tensor:
    return torch.randn(n, dim, dtype=F64, generator=gen(seed))


def w1(a: Tensor, b: Tensor) -> float:
    """Wasserstein-1 between two 1-D sample sets, by their quantiles."""
    return float((torch.quantile(a, QUANTILES) - torch.quantile(b, QUANTILES)).abs().mean())


def sliced_w1(a: Tensor, b: Tensor) -> float:
    """W1 averaged over fixed random unit directions (the coordinate itself in 1-D)."""
    if a.shape[1] == 1:
        return w1(a[:, 0], b[:, 0])
    u = normal(DIRECTIONS, a.shape[1], 1234)
    u = u / u.norm(dim=1, keepdim=True)
    pa, pb = a @ u.T, b @ u.T
    return sum(w1(pa[:, k], pb[:, k]) for k in range(DIRECTIONS)) / DIRECTIONS


def logsnr_step(nfe: int) -> float:
    lam = VP.lambda_(torch.tensor([VP.t_max, VP.t_min], dtype=F64))
    return float(lam[1] - lam[0]) / (nfe - 1)


def labels(n: int, value: int) -> Tensor:
    return torch.full((n,), value, dtype=torch.long)


# --- 1. bidirectional ------------------------------------------------------------------------------------------------


def bidirectional(name: str, target: Any, n: int, nfes: list[int]) -> dict[str, Any]:
    model, dim = target.model(VP), target.dim
    f, b = labels(n, 0), labels(n, 1)
    both = Superposition([{"y": f}, {"y": b}], "sum")

    def sde(noise: Tensor, steps: int, seed: int) -> Tensor:
        return fewstep.sample(
            model, noise, VP, "ddpm", nfe=steps, model_kwargs={"y": f}, guidance=both, generator=gen(seed),
            progress=False,
        )  # fmt: skip

    reference = sde(normal(n, dim, 100), REFERENCE_STEPS, 101)
    out: dict[str, Any] = {
        "floor": sliced_w1(sde(normal(n, dim, 102), REFERENCE_STEPS, 103), reference),
        "reference_half": sliced_w1(sde(normal(n, dim, 100), REFERENCE_STEPS // 2, 101), reference),
        "rows": [],
    }
    for nfe in nfes:
        calls = fewstep.CallCount()
        rule = Bidirectional({"y": f}, {"y": b}, h=logsnr_step(nfe), generator=gen(5))
        x = fewstep.sample(
            model, normal(n, dim, 0), VP, "ddim", nfe=nfe, spacing="logsnr", model_kwargs={"y": f}, guidance=rule,
            calls=calls,
        )  # fmt: skip
        peer = sde(normal(n, dim, 0), calls.network, 6)
        out["rows"].append(
            {"requests": nfe, "network": calls.network, "bidirectional": sliced_w1(x, reference),
             "sum_ddpm_same_calls": sliced_w1(peer, reference)}
        )  # fmt: skip
    print(f"\n{name}: bidirectional (sliced W1 to the averaged-score SDE; floor {out['floor']:.4f}, "
          f"{REFERENCE_STEPS // 2}-step reference {out['reference_half']:.4f})")  # fmt: skip
    print("| network calls | Bidirectional (ddim) | ddpm + Superposition('sum'), same calls |")
    print("|---|---|---|")
    for r in out["rows"]:
        print(f"| {r['network']} | {r['bidirectional']:.4f} | {r['sum_ddpm_same_calls']:.4f} |")
    return out


# --- 2. known coordinates --------------------------------------------------------------------------------------------


def known_coordinates(name: str, target: Any, observed: int, value: Tensor, n: int) -> dict[str, Any]:
    mixture, dim = target.mixture, target.dim
    model = mixture.model(VP)
    mask = torch.zeros(dim, dtype=F64)
    mask[:observed] = 1.0
    y = torch.zeros(1, dim, dtype=F64)
    y[0, :observed] = value
    free = slice(observed, dim)
    exact_set = mixture_posterior(mixture, Mask(y=y, noise_std=0.0, mask=mask))
    exact = exact_set.sample(n, generator=gen(7))[:, free]
    noisy = Mask(y=y, noise_std=0.1, mask=mask)
    exact_noisy = mixture_posterior(mixture, noisy).sample(n, generator=gen(8))
    data_std = float(mixture.covariance().diagonal().mean().sqrt())
    out: dict[str, Any] = {
        "floor": sliced_w1(exact_set.sample(n, generator=gen(9))[:, free], exact),
        "prior": sliced_w1(mixture.sample(n, generator=gen(10))[:, free], exact),
        "rows": [],
    }

    def row(method: str, nfe: str, x: Tensor, calls: fewstep.CallCount, ref: Tensor = exact, obs: Tensor | None = None):
        entry = {"method": method, "nfe": nfe, "network": calls.network, "w1_free": sliced_w1(x[:, free], ref)}
        if obs is not None:
            entry["w1_observed"] = sliced_w1(x[:, :observed], obs[:, :observed])
        out["rows"].append(entry)

    start = normal(n, dim, 0)
    for nfe in (10, 25, 50):
        calls = fewstep.CallCount()
        rule = OneWayDiffusion(Mask(y=y, noise_std=0.0, mask=mask), generator=gen(11))
        x = fewstep.sample(model, start, VP, "ddim", nfe=nfe, guidance=rule, calls=calls, progress=False)
        row("OneWayDiffusion, ddim", str(nfe), x, calls)
    times = fewstep.spacing.model_times(VP, 25, "logsnr")
    for repeats in (2, 5):
        calls = fewstep.CallCount()
        rule = OneWayDiffusion(Mask(y=y, noise_std=0.0, mask=mask), generator=gen(11))
        x = cyclic_sample(
            model, start, VP, times, cycle=(5, 15), repeats=repeats, generator=gen(12), calls=calls, solver="ddim",
            guidance=rule, progress=False,
        )  # fmt: skip
        row(f"OneWayDiffusion + cyclic_sample (nodes 5-15, {repeats} repeats), ddim", "25", x, calls)
    for nfe in (10, 25, 50):
        calls = fewstep.CallCount()
        x = fewstep.sample(
            model, start, VP, "ddim", nfe=nfe, wrappers=[Projection(Mask(y=y, noise_std=0.0, mask=mask))],
            calls=calls, progress=False,
        )  # fmt: skip
        row("Projection (x0_hat replacement), ddim", str(nfe), x, calls)

    def kalman(sigma: float) -> float:
        return 1.0 / (posterior_variance(sigma, data_std) + 0.01)

    noisy_free = exact_noisy[:, free]
    for label, scale in (("1/r^2", 100.0), ("1/(C(sigma) + r^2)", kalman)):
        for nfe in (25, 50):
            calls = fewstep.CallCount()
            rule = SelfGuidance(noisy, scale=scale, through_network=False, data_std=data_std)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = fewstep.sample(model, start, VP, "ddim", nfe=nfe, guidance=rule, calls=calls, progress=False)
            row(f"SelfGuidance scale {label}, noise 0.1, ddim", str(nfe), x, calls, noisy_free, exact_noisy)
    print(f"\n{name}: known coordinates (sliced W1 of the unobserved ones to the exact posterior; floor "
          f"{out['floor']:.4f}, unconditioned prior {out['prior']:.4f})")  # fmt: skip
    print("| method | NFE | network calls | W1 unobserved | W1 observed |")
    print("|---|---|---|---|---|")
    for r in out["rows"]:
        obs = f"{r['w1_observed']:.4f}" if "w1_observed" in r else "-"
        print(f"| {r['method']} | {r['nfe']} | {r['network']} | {r['w1_free']:.4f} | {obs} |")
    return out


# --- 3. self-recurrence ----------------------------------------------------------------------------------------------


def recurrence(target: Any, n: int) -> dict[str, Any]:
    model, dim = target.model(VP), target.dim
    cond = {"y": labels(n, 0)}
    exact = target.condition(0).sample(n, generator=gen(13))
    out: dict[str, Any] = {"floor": sliced_w1(target.condition(0).sample(n, generator=gen(14)), exact), "rows": []}
    for requests in (5, 10, 20):
        for repeats in (1, 2, 3):
            calls = fewstep.CallCount()
            rule = SelfRecurrence(repeats=repeats, h=logsnr_step(requests), generator=gen(15))
            x = fewstep.sample(
                model, normal(n, dim, 0), VP, "ddim", nfe=requests, spacing="logsnr", model_kwargs=cond, guidance=rule,
                calls=calls, progress=False,
            )  # fmt: skip
            plain = fewstep.sample(
                model, normal(n, dim, 0), VP, "ddim", nfe=calls.network, spacing="logsnr", model_kwargs=cond,
                progress=False,
            )  # fmt: skip
            out["rows"].append(
                {"requests": requests, "repeats": repeats, "network": calls.network,
                 "recurrence": sliced_w1(x, exact), "ddim_same_calls": sliced_w1(plain, exact)}
            )  # fmt: skip
    print(f"\nlabelled_2d class 0: self-recurrence (W1 to the exact class law; floor {out['floor']:.4f})")
    print("| requests | repeats | network calls | SelfRecurrence (ddim) | ddim, same calls |")
    print("|---|---|---|---|---|")
    for r in out["rows"]:
        print(
            f"| {r['requests']} | {r['repeats']} | {r['network']} | {r['recurrence']:.4f} "
            f"| {r['ddim_same_calls']:.4f} |"
        )
    return out


def main() -> None:
    start = time.time()
    torch.set_num_threads(2)
    t2, t64 = labelled_mixture_2d(), labelled_mixture_nd(64)
    value64 = t64.mixture.sample(1, generator=gen(20))[0, :32]
    results = {
        "bidirectional": {
            "labelled_2d": bidirectional("labelled_2d", t2, 2000, [5, 10, 20, 50]),
            "labelled_64d": bidirectional("labelled_64d", t64, 500, [5, 10, 20, 50]),
        },
        "known_coordinates": {
            "labelled_2d": known_coordinates("labelled_2d", t2, 1, torch.tensor([0.5], dtype=F64), 2000),
            "labelled_64d": known_coordinates("labelled_64d", t64, 32, value64, 500),
        },
        "self_recurrence": recurrence(t2, 2000),
        "seconds": round(time.time() - start, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print(f"\n{results['seconds']} s; results in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
