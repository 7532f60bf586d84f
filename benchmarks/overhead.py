"""Per-step solver overhead: fewstep against diffusers and k-diffusion, with a trivial model on one CPU thread.

The model is ``model(x, t) = 0.1 * x`` (an epsilon prediction) on a 1x4x64x64 float32 latent, Stable Diffusion's
discrete schedule, diffusers' "trailing" timesteps and a last step to sigma = 0, so every implementation does
the same work. For each implementation and step count it measures (median of ``--repeats`` runs):

- total: one complete sampling call (diffusers: ``set_timesteps`` and the ``step`` loop);
- setup: the fixed cost before the first model call (fewstep: building the grid and the solver's
  coefficients, timed until the model is first called; diffusers: ``set_timesteps``; k-diffusion: the sigmas);
- model: the same number of model calls alone, in a loop;

and reports the solver overhead per step, ``(total - setup - model) / steps``, in microseconds.

Usage: ``python benchmarks/overhead.py [--steps 20 50] [--repeats 25] [--solvers dpmpp_2m ddim ...]``.
diffusers and k-diffusion rows appear when they are installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import fewstep

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}
NUM_TRAIN = 1000


class _FirstCall(Exception):
    """Raised by the model on its first call: ends a run when timing the setup alone."""


def model(x: Tensor, t: object) -> Tensor:
    return x * 0.1


def _stop_model(x: Tensor, t: object) -> Tensor:
    raise _FirstCall


@dataclass
class Row:
    name: str
    steps: int
    nfe: int
    total_s: float
    setup_s: float
    model_s: float

    @property
    def per_step_us(self) -> float:
        return (self.total_s - self.setup_s - self.model_s) / self.steps * 1e6


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median time of ``fn`` until it raises :class:`_FirstCall`."""

    def run() -> None:
        try:
            fn()
        except _FirstCall:
            return
        raise RuntimeError("the model was never called")

    return median_time(run, repeats, sync)


def model_time(x: Tensor, nfe: int, repeats: int, sync: Callable[[], None]) -> float:
    t = torch.tensor(500.0, device=x.device)

    def loop() -> None:
        for _ in range(nfe):
            model(x, t)

    return median_time(loop, repeats, sync)


def count_calls(fn: Callable[[Callable[..., Tensor]], object]) -> int:
    calls = 0

    def counted(x: Tensor, t: object) -> Tensor:
        nonlocal calls
        calls += 1
        return model(x, t)

    fn(counted)
    return calls


def bench_fewstep(solver: str, x: Tensor, steps: int, repeats: int, sync: Callable[[], None]) -> Row:
    schedule = fewstep.DiscreteVP.scaled_linear()

    def run(m: Callable[..., Tensor]) -> Tensor:
        return fewstep.sample(m, x, schedule, solver, steps=steps, spacing="trailing", progress=False)

    nfe = count_calls(run)
    return Row(
        f"fewstep {solver}",
        steps,
        nfe,
        median_time(lambda: run(model), repeats, sync),
        setup_time(lambda: run(_stop_model), repeats, sync),
        model_time(x, nfe, repeats, sync),
    )


def bench_diffusers(x: Tensor, steps: int, repeats: int, sync: Callable[[], None]) -> Row | None:
    try:
        from diffusers import DPMSolverMultistepScheduler
    except ImportError:
        return None
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
        lower_order_final=True,
        timestep_spacing="trailing",
        **SD_BETAS,
    )

    def run(m: Callable[..., Tensor]) -> Tensor:
        scheduler.set_timesteps(steps, device=x.device)
        sample = x
        for t in scheduler.timesteps:
            out = m(sample, t)
            sample = scheduler.step(out, t, sample, return_dict=False)[0]
        return sample

    nfe = count_calls(run)
    return Row(
        "diffusers DPMSolverMultistep(2)",
        steps,
        nfe,
        median_time(lambda: run(model), repeats, sync),
        setup_time(lambda: run(_stop_model), repeats, sync),
        model_time(x, nfe, repeats, sync),
    )


def bench_k_diffusion(x: Tensor, steps: int, repeats: int, sync: Callable[[], None], wrapped: bool) -> Row | None:
    try:
        from k_diffusion.external import DiscreteEpsDDPMDenoiser
        from k_diffusion.sampling import sample_dpmpp_2m
    except ImportError:
        return None
    ac = torch.from_numpy(fewstep.DiscreteVP.scaled_linear().alphas_cumprod).to(device=x.device, dtype=torch.float32)
    idx = (torch.arange(NUM_TRAIN, 0, -NUM_TRAIN / steps).round() - 1).long().to(x.device)  # diffusers' trailing

    def grid() -> Tensor:
        sigmas = ((1 - ac[idx]) / ac[idx]) ** 0.5
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def run(m: Callable[..., Tensor]) -> Tensor:
        sigmas = grid()
        if wrapped:  # an epsilon model behind k-diffusion's discrete-schedule wrapper (as CompVisDenoiser)
            den = DiscreteEpsDDPMDenoiser(m, ac, quantize=False)
        else:  # a model that is already a k-diffusion denoiser (x, sigma) -> x0
            den = m
        return sample_dpmpp_2m(den, x, sigmas, disable=True)

    def setup_run(m: Callable[..., Tensor]) -> None:
        sigmas = grid()
        if wrapped:
            DiscreteEpsDDPMDenoiser(m, ac, quantize=False)
        m(x, sigmas[0])

    nfe = count_calls(run)
    name = "k-diffusion dpmpp_2m (DiscreteEpsDDPMDenoiser)" if wrapped else "k-diffusion dpmpp_2m (plain denoiser)"
    return Row(
        name,
        steps,
        nfe,
        median_time(lambda: run(model), repeats, sync),
        setup_time(lambda: setup_run(_stop_model), repeats, sync),
        model_time(x, nfe, repeats, sync),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "dpmpp_3m", "ddim", "euler", "heun", "dpmpp_2s"])
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 4, 64, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)).to(device)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device {device}, latent {tuple(x.shape)} float32, "
        f"median of {args.repeats} runs"
    )
    header = f"{'implementation':<48} {'steps':>5} {'NFE':>4} {'total ms':>9} {'setup ms':>9} {'model us/call':>13} {'overhead us/step':>16}"
    print(header)
    print("-" * len(header))
    ratios = []
    with torch.inference_mode():
        for steps in args.steps:
            rows: list[Row] = []
            for solver in args.solvers:
                rows.append(bench_fewstep(solver, x, steps, args.repeats, sync))
            peers = [
                bench_k_diffusion(x, steps, args.repeats, sync, wrapped=True),
                bench_k_diffusion(x, steps, args.repeats, sync, wrapped=False),
                bench_diffusers(x, steps, args.repeats, sync),
            ]
            rows += [r for r in peers if r is not None]
            for r in rows:
                print(
                    f"{r.name:<48} {r.steps:>5} {r.nfe:>4} {r.total_s * 1e3:>9.2f} {r.setup_s * 1e3:>9.2f} "
                    f"{r.model_s / r.nfe * 1e6:>13.1f} {r.per_step_us:>16.1f}"
                )
            ours = next((r for r in rows if r.name == "fewstep dpmpp_2m"), None)
            if ours is not None:
                for r in rows:
                    if not r.name.startswith("fewstep"):
                        ratios.append(
                            f"{steps:>3} steps: {r.name} / fewstep dpmpp_2m = {r.per_step_us / ours.per_step_us:.1f}x"
                        )
            print()
    if ratios:
        print("Per-step overhead ratios (peer / fewstep, DPM-Solver++ 2M):")
        print("\n".join(ratios))


if __name__ == "__main__":
    main()
