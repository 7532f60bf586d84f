"""Adjoint gradients (``sample(..., grad="adjoint" | "adjoint_ode")``): the discrete adjoint against plain autograd
through the same run, the continuous adjoint's convergence order, memory of the recorded graph, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from adjoint_models import MLP, MixtureEps
from torch import Tensor

import fewstep
from fewstep.adjoint import AdjointODE, NotDifferentiable
from fewstep.bench.targets import mixture_2d

F64 = torch.float64
# the random MLPs are not trained denoisers: their runs' states outgrow the marginal scale (a warning of the guard)
pytestmark = pytest.mark.filterwarnings("ignore::fewstep.guard.DivergenceWarning")
SCHEDULES = {
    "vp": (fewstep.VP(), "logsnr", 1.0),
    "flow": (fewstep.Flow(), "uniform", 1.0),
    "edm": (fewstep.EDM(), "karras", 80.0),
}


def loss_of(x: Tensor) -> Tensor:
    return (x**2).sum() + torch.sin(3.0 * x[:, 0]).sum()


def gradients(model: torch.nn.Module, schedule_name: str, solver: str, grad: object, **options: object) -> list[Tensor]:
    """Gradients of :func:`loss_of` the sample for the noise, a conditioning tensor and the model's parameters."""
    schedule, spacing, scale = SCHEDULES[schedule_name]
    noise = (torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * scale).requires_grad_(True)
    shift = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    model.zero_grad()
    x = fewstep.sample(
        model, noise, schedule, solver, spacing=spacing, grad=grad, model_kwargs={"shift": shift}, progress=False,
        generator=torch.Generator().manual_seed(1), **options,
    )  # fmt: skip
    loss_of(x).backward()
    return [noise.grad, shift.grad, *(p.grad for p in model.parameters())]  # type: ignore[list-item]


def rel(a: list[Tensor], b: list[Tensor]) -> float:
    va, vb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float((va - vb).norm() / vb.norm())


class ShiftedMLP(MLP):
    def forward(self, x: Tensor, time: Tensor, shift: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x if shift is None else x - shift, time)


CASES = [
    ("vp", "ddim", 12),
    ("vp", "dpmpp_2m", 12),
    ("vp", "dpmpp_3m", 12),
    ("vp", "dpmpp_2s", 11),
    ("vp", "unipc_bh2", 12),
    ("vp", "deis_3", 12),
    ("flow", "euler", 12),
    ("flow", "heun", 11),
    ("flow", "unipc_bh2", 12),
    ("edm", "heun", 11),
    ("edm", "lms", 12),
    ("vp", "euler_ancestral", 12),  # stochastic: the same drawn noise in both runs
    ("vp", "dpmpp_2m_sde", 12),
]


@pytest.mark.parametrize(("schedule", "solver", "nfe"), CASES)
def test_discrete_adjoint_equals_autograd_mixture(schedule: str, solver: str, nfe: int) -> None:
    model = MixtureEps(mixture_2d(), SCHEDULES[schedule][0])
    ref = gradients(model, schedule, solver, True, nfe=nfe)
    got = gradients(model, schedule, solver, "adjoint", nfe=nfe)
    assert all(torch.isfinite(g).all() for g in ref) and rel(ref, [torch.zeros_like(g) for g in ref]) > 0
    for g, r in zip(got, ref, strict=True):  # noise, conditioning tensor, parameter: each to 1e-8
        assert float((g - r).norm()) <= 1e-8 * max(float(r.norm()), 1e-300)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2", "dpmpp_2s"])
def test_discrete_adjoint_equals_autograd_mlp(solver: str) -> None:
    model = ShiftedMLP(2, 32)
    ref = gradients(model, "vp", solver, True, nfe=9)
    got = gradients(model, "vp", solver, "adjoint", nfe=9)
    assert rel(got, ref) <= 1e-8


def test_discrete_adjoint_under_guidance_and_closures() -> None:
    """CFG (two branches in one call) and a model that closes over a tensor requiring grad (a non-leaf)."""
    leaf = torch.tensor(0.7, dtype=F64, requires_grad=True)
    scale = leaf * 2.0  # non-leaf closure
    net = MLP(2, 16)

    def model(x: Tensor, time: Tensor, cond: Tensor) -> Tensor:
        return net(x, time, cond) * scale

    def grads(grad: object) -> list[Tensor]:
        noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_(True)
        cond = torch.full((3, 16), 0.1, dtype=F64, requires_grad=True)
        leaf.grad = None
        net.zero_grad()
        x = fewstep.sample(
            model, noise, fewstep.VP(), "dpmpp_2m", nfe=8, grad=grad, model_kwargs={"cond": cond},
            guidance_scale=3.0, uncond_kwargs={"cond": torch.zeros(3, 16, dtype=F64)},
        )  # fmt: skip
        loss_of(x).backward(retain_graph=True)
        return [noise.grad, cond.grad, leaf.grad, net.w1.grad]  # type: ignore[list-item]

    assert rel(grads("adjoint"), grads(True)) <= 1e-8


def saved_bytes(model: torch.nn.Module, grad: object, steps: int) -> int:
    """Bytes of the tensors autograd saves during the run (what its backward pass will hold)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    noise = torch.randn(4, 2, dtype=F64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fewstep.sample(model, noise, fewstep.VP(), "dpmpp_2m", steps=steps, grad=grad, progress=False)
    return total


def test_discrete_adjoint_saves_no_activations() -> None:
    """Autograd saves each call's hidden activations (width 512); the adjoint saves O(state) per call."""
    model = MLP(2, 512)
    auto = [saved_bytes(model, True, n) for n in (10, 20)]
    adj = [saved_bytes(model, "adjoint", n) for n in (10, 20)]
    per_step_auto, per_step_adj = (auto[1] - auto[0]) / 10, (adj[1] - adj[0]) / 10
    assert per_step_auto >= 4 * 512 * 8  # at least one hidden activation per call
    assert per_step_adj <= 8 * 4 * 2 * 8  # a few states (4 x 2 float64) per call
    assert per_step_adj * 50 < per_step_auto


def test_continuous_adjoint_converges_at_its_order() -> None:
    """The continuous adjoint approaches the gradient of the exact flow (here the discrete adjoint of a third-order
    run at 640 evaluations) at order 1 (Euler) and 2 (Heun) as the NFE doubles."""
    model = ShiftedMLP(2, 16)
    for final in ("t_min", "zero"):
        ref = gradients(model, "vp", "dpmpp_3m", "adjoint", nfe=640, final=final)
        for order, low, high in ((1, 0.8, 1.3), (2, 1.7, 2.4)):
            errs = [
                rel(gradients(model, "vp", "dpmpp_3m", AdjointODE(order), nfe=n, final=final), ref) for n in (80, 160)
            ]
            slope = math.log2(errs[0] / errs[1])
            assert low <= slope <= high, (final, order, errs)


def test_continuous_adjoint_reaches_every_input() -> None:
    """Noise, conditioning, parameters and closed-over leaves all get a gradient, through .backward() and
    torch.autograd.grad alike, close to autograd's at a high NFE."""
    extra = torch.tensor(0.9, dtype=F64, requires_grad=True)
    net = ShiftedMLP(2, 16)

    def model(x: Tensor, time: Tensor, shift: Tensor) -> Tensor:
        return net(x, time, shift) * extra

    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=F64).requires_grad_(True)
    shift = torch.tensor([0.2, 0.1], dtype=F64, requires_grad=True)
    inputs = [noise, shift, extra, *net.parameters()]

    def grads(grad: object) -> tuple[Tensor, ...]:
        x = fewstep.sample(model, noise, fewstep.VP(), "dpmpp_2m", nfe=200, grad=grad, model_kwargs={"shift": shift})
        return torch.autograd.grad(loss_of(x), inputs)

    ref, got = grads(True), grads("adjoint_ode")
    for g, r in zip(got, ref, strict=True):
        assert float((g - r).norm()) <= 1e-3 * float(r.norm())


def counting_model() -> tuple[MLP, list[int]]:
    calls = [0]
    net = MLP(2, 8)
    net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return net, calls


@pytest.mark.parametrize(
    ("options", "kind", "words"),
    [
        ({"grad": "adjiont"}, ValueError, ["grad:", "'adjoint'", "did you mean"]),
        ({"grad": 1}, TypeError, ["grad:", "'adjoint_ode'"]),
        ({"grad": "adjoint", "checkpoint": fewstep.Checkpoint(step=1)}, ValueError, ["checkpoint:", "grad=True"]),
        ({"grad": "adjoint_ode", "solver": "euler_ancestral"}, ValueError, ["'euler_ancestral'", "grad='adjoint'"]),
    ],
)
def test_errors_before_any_model_call(options: dict, kind: type, words: list[str]) -> None:
    net, calls = counting_model()
    options = {"solver": "dpmpp_2m", **options}
    with pytest.raises(kind) as info:
        fewstep.sample(net, torch.randn(2, 2, dtype=F64), fewstep.VP(), nfe=6, **options)
    assert calls[0] == 0
    for word in words:
        assert word in str(info.value)


def test_adjoint_ode_order_checked() -> None:
    with pytest.raises(ValueError, match="order"):
        AdjointODE(order=3)


@pytest.mark.parametrize("grad", ["adjoint", "adjoint_ode"])
def test_non_differentiable_model_is_named(grad: str) -> None:
    """The exact mixture target's network detaches its output: named at its first call, before any backward."""
    model = mixture_2d().model(fewstep.VP(), "epsilon")
    noise = torch.randn(3, 2, dtype=F64, requires_grad=True)
    with pytest.raises(NotDifferentiable, match="MixtureModel"):
        fewstep.sample(model, noise, fewstep.VP(), "dpmpp_2m", nfe=6, grad=grad)


def test_no_grad_needed_runs_plainly() -> None:
    """Nothing requires grad: the adjoint run returns the plain sample (no graph)."""
    net = MLP(2, 8).requires_grad_(False)
    noise = torch.randn(3, 2, dtype=F64)
    out = fewstep.sample(net, noise, fewstep.VP(), "dpmpp_2m", nfe=6, grad="adjoint")
    assert not out.requires_grad
    torch.testing.assert_close(out, fewstep.sample(net, noise, fewstep.VP(), "dpmpp_2m", nfe=6), rtol=0, atol=0)
