"""The digits UNet target (``fewstep.bench.targets.digits_unet_target``): training time, reference accuracy,
sample quality.

Prints (1) the training time and final loss of the default config (trained now with ``--retrain``: wall and
CPU time, the latter close to the wall time on an idle core; else the wall time recorded in the cache), (2) how closely the reference solve agrees with one of twice the steps, and its
wall-clock time, (3) FD-digits and the mean nearest-neighbour distance to the data set of 10-NFE DPM-Solver++(2M)
samples of the trained network, of the untrained network and of N(0, I) noise, against exact samples of the
digits (their own values between two exact sample sets in the last line), and (4) a few solvers' RMSE against
the reference.
Run: python benchmarks/digits_unet.py [--retrain] [--samples 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import fewstep
from fewstep.bench.metrics import DigitsFeatures, frechet_distance
from fewstep.bench.targets import digits_unet_target
from fewstep.bench.targets.digits_unet import DigitsUNet, digits_images

F64 = torch.float64


def nearest_distance(x: torch.Tensor, images: torch.Tensor) -> float:
    """Mean over samples of the Euclidean distance to the nearest image of the data set."""
    return float(torch.cdist(x.reshape(x.shape[0], -1).to(F64), images).min(dim=1).values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train now (without the cache) and time it")
    parser.add_argument("--samples", type=int, default=64, help="samples for the reference check and the RMSEs")
    parser.add_argument("--quality-samples", type=int, default=512, help="samples for FD-digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cpu = time.process_time()
    target = digits_unet_target(cache=not args.retrain)
    cpu = time.process_time() - cpu
    params = sum(p.numel() for p in target.model.parameters())
    print(f"digits UNet: {params:,} parameters, {target.config}")
    if target.from_cache:
        print(
            f"training: {target.train_seconds:.1f} s wall (as recorded in the cache), final loss {target.final_loss:.4f}"
        )
    else:
        print(
            f"training: {target.train_seconds:.1f} s wall, {cpu:.1f} s CPU (one thread), final loss {target.final_loss:.4f}"
        )

    torch.set_num_threads(2)
    schedule, sigma_max = target.schedule, float(target.schedule.sigma(target.schedule.t_max))
    noise = torch.randn(args.samples, 64, generator=torch.Generator().manual_seed(args.seed), dtype=F64) * sigma_max
    steps = target.reference_steps
    start = time.perf_counter()
    ref = target.reference(noise)
    seconds = time.perf_counter() - start
    finer = target.reference(noise, steps=2 * steps)
    diff = (ref - finer).abs()
    print(
        f"reference ({steps} DPM-Solver-3 steps, {args.samples} samples, {seconds:.1f} s) against {2 * steps} steps: "
        f"max |diff| {float(diff.max()):.2e}, RMSE {float(diff.square().mean().sqrt()):.2e}, "
        f"max |x| {float(finer.abs().max()):.2f}"
    )

    features, images = DigitsFeatures(), digits_images()
    n = args.quality_samples
    exact = target.data.sample(n, generator=torch.Generator().manual_seed(args.seed + 1))
    f_exact = features(exact)
    z = torch.randn(n, 64, generator=torch.Generator().manual_seed(args.seed + 2), dtype=F64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        untrained = DigitsUNet(schedule=schedule).to(F64).eval().requires_grad_(False)
    warnings.simplefilter("ignore", fewstep.DivergenceWarning)  # the untrained network's samples blow up
    rows = {
        "trained, dpmpp_2m NFE 10": fewstep.sample(target.model, z * sigma_max, schedule, "dpmpp_2m", nfe=10),
        "untrained, dpmpp_2m NFE 10": fewstep.sample(untrained, z * sigma_max, schedule, "dpmpp_2m", nfe=10),
        "N(0, I) noise": z,
        "exact samples (another draw)": target.data.sample(n, generator=torch.Generator().manual_seed(args.seed + 3)),
    }
    print(f"{'samples (' + str(n) + ')':32s} {'FD-digits':>10s} {'nearest image':>14s}")
    for name, x in rows.items():
        print(f"{name:32s} {frechet_distance(features(x), f_exact):10.3f} {nearest_distance(x, images):14.3f}")

    print(f"RMSE against the reference ({args.samples} samples), logsnr spacing")
    for solver in ("ddim", "dpmpp_2m", "ipndm", "unipc_bh2"):
        errs = []
        for nfe in (5, 10, 20):
            x = fewstep.sample(target.model, noise, schedule, solver, nfe=nfe)
            errs.append(f"NFE {nfe}: {float((x - ref).square().mean().sqrt()):.4f}")
        print(f"  {solver:10s} " + ", ".join(errs))


if __name__ == "__main__":
    main()
