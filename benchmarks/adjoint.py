"""Adjoint gradients: agreement with plain autograd and peak memory, from 10 to 200 steps.

A model whose activations dominate the state: a float64 MLP ``[x, t] -> width -> width -> x`` (tanh; width 1024,
state 128 x 64). For each number of steps, the gradient of ``|x|^2 + sum sin(3 x)`` of the sample (DPM-Solver++(2M),
VP schedule, logSNR times) for the noise, a conditioning tensor and the parameters, by plain autograd
(``grad=True``), the discrete adjoint (``grad="adjoint"``) and the continuous adjoint (``grad="adjoint_ode"``,
Heun); the relative error of each against autograd's, and the peak CPU memory of the forward and backward pass
together (:func:`fewstep.bench.memory.peak_allocated_bytes`, the torch profiler's allocations: the parameters'
gradients, 8.5 MB, and their accumulation are in every column).

Second table, the continuous adjoint's convergence: on a small MLP (width 16, state 8 x 2, VP, DPM-Solver++(3M),
``final="t_min"``), the relative error of ``AdjointODE(order)`` at NFE 10 to 160 against the discrete adjoint of a
640-evaluation run (the exact flow's gradient to about 1e-6), and the discrete adjoint's own at each NFE.
Run: python benchmarks/adjoint.py [--steps 10 20 50 100 200] [--width 1024] [--threads 2] [--only convergence]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fewstep
from fewstep.adjoint import AdjointODE
from fewstep.bench.memory import peak_allocated_bytes
from fewstep.guard import DivergenceWarning

MODES: dict[str, Any] = {"autograd": True, "adjoint": "adjoint", "adjoint_ode": "adjoint_ode"}


class WideMLP(nn.Module):
    """``eps_hat = W3 tanh(W2 tanh(W1 [x, t] + b1 + cond) + b2)``: two hidden layers of ``width``."""

    def __init__(self, dim: int, width: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def weight(n_in: int, n_out: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(n_in, n_out, generator=g, dtype=torch.float64) / n_in**0.5)

        self.w1, self.w2, self.w3 = weight(dim + 1, width), weight(width, width), weight(width, dim)
        self.b1 = nn.Parameter(torch.zeros(width, dtype=torch.float64))
        self.b2 = nn.Parameter(torch.zeros(width, dtype=torch.float64))

    def forward(self, x: Tensor, time: Tensor, cond: Tensor) -> Tensor:
        t = time.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        h = torch.tanh(torch.cat([x, t], 1) @ self.w1 + self.b1 + cond)
        return 0.5 * torch.tanh(h @ self.w2 + self.b2) @ self.w3


def gradient(model: WideMLP, noise: Tensor, cond: Tensor, steps: int, grad: Any) -> Tensor:
    """The gradient (noise, conditioning, parameters) as one vector."""
    x_t = noise.clone().requires_grad_(True)
    c = cond.clone().requires_grad_(True)
    x = fewstep.sample(
        model, x_t, fewstep.VP(), "dpmpp_2m", steps=steps, grad=grad, model_kwargs={"cond": c}, progress=False
    )
    ((x**2).sum() + torch.sin(3.0 * x).sum()).backward()
    parts = [x_t.grad, c.grad, *(p.grad for p in model.parameters())]
    return torch.cat([p.flatten() for p in parts if p is not None])


def measured(model: WideMLP, noise: Tensor, cond: Tensor, steps: int, grad: Any) -> tuple[Tensor, float]:
    """:func:`gradient` and the peak memory (MB) of computing it."""
    out: list[Tensor] = []
    model.zero_grad(set_to_none=True)  # freed before the measurement, which counts only what it allocates
    peak = peak_allocated_bytes(lambda: out.append(gradient(model, noise, cond, steps, grad)))
    return out[0], peak / 2**20


def convergence(nfes: tuple[int, ...] = (10, 20, 40, 80, 160), reference: int = 640) -> list[dict[str, Any]]:
    """The continuous adjoint's relative error against the discrete adjoint at ``reference`` evaluations."""
    model = WideMLP(2, 16, seed=3)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cond = torch.full((16,), 0.05, dtype=torch.float64)

    def grad(nfe: int, mode: Any) -> Tensor:
        model.zero_grad(set_to_none=True)
        x_t, c = noise.clone().requires_grad_(True), cond.clone().requires_grad_(True)
        x = fewstep.sample(
            model, x_t, fewstep.VP(), "dpmpp_3m", nfe=nfe, grad=mode, model_kwargs={"cond": c}, final="t_min",
            progress=False,
        )  # fmt: skip
        ((x**2).sum() + torch.sin(3.0 * x).sum()).backward()
        return torch.cat([p.flatten() for p in (x_t.grad, c.grad, *(q.grad for q in model.parameters()))])

    ref = grad(reference, "adjoint")
    rows = []
    print("\n| NFE | AdjointODE(order=1) | AdjointODE(order=2) | discrete adjoint of the run |")
    print("|---|---|---|---|")
    for nfe in nfes:
        errors = [
            float((grad(nfe, mode) - ref).norm() / ref.norm()) for mode in (AdjointODE(1), AdjointODE(2), "adjoint")
        ]
        rows.append({"nfe": nfe, "order_1": errors[0], "order_2": errors[1], "discrete": errors[2]})
        print(f"| {nfe} | " + " | ".join(f"{e:.1e}" for e in errors) + " |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["memory", "convergence"], default=None)
    parser.add_argument("--out", default="benchmarks/results/adjoint.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", DivergenceWarning)  # a random network, not a trained denoiser: its states grow
    results: dict[str, Any] = {}
    if args.only != "memory":
        results["convergence"] = convergence()
    if args.only != "convergence":
        results["memory"] = memory(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only is not None and out.exists():  # one table rerun: keep the other's results
        results = {**json.loads(out.read_text()), **results}
    out.write_text(json.dumps(results, indent=1) + "\n")


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """The agreement and peak-memory table."""
    model = WideMLP(args.dim, args.width)
    noise = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = torch.full((args.width,), 0.05, dtype=torch.float64)
    rows = []
    print(
        "\n| steps | rel. error adjoint | rel. error adjoint_ode | peak MB autograd | peak MB adjoint | peak MB adjoint_ode |"
    )
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        grads: dict[str, Tensor] = {}
        peaks: dict[str, float] = {}
        for name, mode in MODES.items():
            grads[name], peaks[name] = measured(model, noise, cond, steps, mode)
        ref = grads["autograd"]
        errors = {name: float((grads[name] - ref).norm() / ref.norm()) for name in ("adjoint", "adjoint_ode")}
        rows.append({"steps": steps, "relative_error": errors, "peak_mb": peaks})
        print(
            f"| {steps} | {errors['adjoint']:.1e} | {errors['adjoint_ode']:.1e} | {peaks['autograd']:.0f} | "
            f"{peaks['adjoint']:.0f} | {peaks['adjoint_ode']:.0f} |",
            flush=True,
        )
    return {"setup": {k: getattr(args, k) for k in ("width", "batch", "dim")}, "rows": rows}


if __name__ == "__main__":
    main()
