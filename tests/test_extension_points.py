"""The extension points of the core, each used from outside the package the way a new module would use it:

- a guidance rule is one class with ``wrap(network)`` (:mod:`fewstep.guidance`), touching no solver;
- a layer on ``(x0_hat, eps_hat)`` (a cache that skips network calls, a data-consistency step) is one class with
  ``wrap(inner, needs_eps)`` (:class:`fewstep.model.EvaluationWrapper`), counted in the run's :class:`CallCount`;
- a solver is one class registered with ``@register``: ``sample``, the k-diffusion signature, the diffusers
  scheduler and NFE planning pick it up with no other change;
- the call accounting: network calls, branch evaluations, substituted evaluations, backward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from helpers import Counting
from torch import Tensor

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.guidance import ClassifierFreeGuidance
from fewstep.model import Evaluation, Network, Point, Prediction
from fewstep.solvers import Solver, base, register

F64 = torch.float64
VP = fewstep.VP()
TARGET = mixture_2d()


def noise(n: int = 8, seed: int = 0) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


class ConditionalModel:
    """``out = eps_exact(x, t) + 0.1 c`` for a per-sample condition ``c`` of shape (B, 1): affine in ``c``."""

    def __init__(self) -> None:
        self.exact = TARGET.model(VP, "epsilon")
        self.batches: list[int] = []

    def __call__(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return self.exact(x, t) + 0.1 * c


# --------------------------------------------------------------------------------------------------------- guidance


class ThreeBranchGuidance:
    """A guidance rule written outside the package (one class): ``out = out_u + s1 (out_a - out_u) + s2 (out_b -
    out_u)`` with three conditions batched in one network call, e.g. composing two prompts."""

    def __init__(self, s1: float, s2: float, c_u: Tensor, c_b: Tensor):
        self.s1, self.s2, self.c_u, self.c_b = s1, s2, c_u, c_b

    def wrap(self, network: Network) -> Any:
        kwargs = {"c": torch.cat([self.c_u, network.kwargs["c"], self.c_b])}

        def output(x: Tensor, time: Tensor, t: float) -> Tensor:
            out_u, out_a, out_b = network(torch.cat([x, x, x]), time.repeat(3), t, kwargs, branches=3).chunk(3)
            return out_u + self.s1 * (out_a - out_u) + self.s2 * (out_b - out_u)

        return output


def test_a_guidance_rule_is_one_class_and_counts_branches() -> None:
    """The three-branch rule runs through every solver family unchanged, equals the model at the combined condition
    (the model is affine in c), and a batched call is one network call of three branch evaluations."""
    x = noise()
    c_a, c_b, c_u = torch.ones(8, 1, dtype=F64), -torch.ones(8, 1, dtype=F64), torch.zeros(8, 1, dtype=F64)
    for solver in ("dpmpp_2m", "dpm_solver_3", "heun", "euler_ancestral"):
        model, calls = ConditionalModel(), fewstep.CallCount()
        rule = ThreeBranchGuidance(2.0, 0.5, c_u, c_b)
        gen = torch.Generator().manual_seed(1)
        out = fewstep.sample(model, x, VP, solver, nfe=9, model_kwargs={"c": c_a},
                             guidance=rule, calls=calls, generator=gen)  # fmt: skip
        combined = c_u + 2.0 * (c_a - c_u) + 0.5 * (c_b - c_u)
        gen = torch.Generator().manual_seed(1)
        want = fewstep.sample(ConditionalModel(), x, VP, solver, nfe=calls.network, model_kwargs={"c": combined},
                              generator=gen)  # fmt: skip
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        assert calls.branches == 3 * calls.network and set(model.batches) == {24}


def test_cfg_is_a_guidance_rule() -> None:
    """``guidance=ClassifierFreeGuidance(...)`` is what ``guidance_scale=`` builds; one call, two branches."""
    model, x = ConditionalModel(), noise()
    cond, uncond = {"c": torch.ones(8, 1, dtype=F64)}, {"c": torch.zeros(8, 1, dtype=F64)}
    calls = fewstep.CallCount()
    a = fewstep.sample(model, x, VP, "dpmpp_3m", nfe=8, model_kwargs=cond, guidance_scale=4.0, uncond_kwargs=uncond,
                       guidance_rescale=0.3, calls=calls)  # fmt: skip
    b = fewstep.sample(model, x, VP, "dpmpp_3m", nfe=8, model_kwargs=cond,
                       guidance=ClassifierFreeGuidance(4.0, uncond, rescale=0.3))  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert calls == fewstep.CallCount(network=8, branches=16, requests=8)
    with pytest.raises(ValueError, match="guidance, guidance_scale"):
        fewstep.sample(model, x, VP, "ddim", nfe=3, model_kwargs=cond, guidance_scale=2.0, uncond_kwargs=uncond,
                       guidance=ClassifierFreeGuidance(2.0, uncond))  # fmt: skip
    with pytest.raises(TypeError, match="guidance: must be a guidance rule"):
        fewstep.sample(model, x, VP, "ddim", nfe=3, model_kwargs=cond, guidance=lambda out: out)  # type: ignore[arg-type]
    assert model.batches == [16] * 16  # the refused runs called nothing


# ------------------------------------------------------------------------------------------------ evaluation layers


class ReuseEveryOther:
    """A layer that answers every second request with the previous prediction (a stand-in for an output cache):
    a substituted evaluation, counted apart from the network calls."""

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: fewstep.CallCount) -> Evaluation:
        state: dict[str, Any] = {"n": 0, "last": None}

        def evaluate(x: Tensor, p: Point) -> Prediction:
            state["n"] += 1
            if state["n"] % 2 == 0 and state["last"] is not None:
                calls.substituted += 1
                return state["last"]
            state["last"] = inner(x, p)
            return state["last"]

        return evaluate


def test_an_evaluation_layer_wraps_the_stack_and_substitutes_calls() -> None:
    """A layer given to ``sample(wrappers=)`` sees every request of any solver; what it answers without the network
    is counted as substituted, not as NFE, and the solver's plan of requests still holds."""
    counting = Counting(TARGET.model(VP, "epsilon"))
    calls = fewstep.CallCount()
    out = fewstep.sample(counting, noise(), VP, "dpmpp_2m", nfe=10, wrappers=[ReuseEveryOther()], calls=calls)
    assert calls == fewstep.CallCount(network=5, branches=5, substituted=5, requests=10) and counting.calls == 5
    assert calls.nfe == 5 and bool(torch.isfinite(out).all())
    with pytest.raises(TypeError, match="wrappers: each must have wrap"):
        fewstep.sample(counting, noise(), VP, "dpmpp_2m", nfe=10, wrappers=[lambda x, p: (x, x)])  # type: ignore[list-item]
    assert counting.calls == 5


# --------------------------------------------------------------------------------------------------------- solvers


@pytest.fixture
def midpoint_solver() -> Iterator[type[Solver]]:
    """A solver written outside the package (one class, registered), removed from the registry afterwards."""

    class ExplicitMidpoint(Solver):
        """Explicit midpoint in lambda on the noise prediction: ``u = x_s`` moved half a step by DDIM, then the full
        DDIM step with the noise estimate at ``u`` (second order)."""

        name = "test_explicit_midpoint"
        order = 2
        nfe_per_step = 2
        summary = "explicit midpoint in lambda (test)"

        def solve(self, x: Tensor, nodes: Any, ctx: Any) -> Any:
            plan = []
            for i, k in enumerate(self.step_orders(nodes)):
                mid = nodes.point_at_lambda(nodes.lam[i] + 0.5 * nodes.h[i]) if k == 2 else None
                plan.append((mid, nodes.alpha[i + 1], nodes.sigma[i + 1]))
            for i in ctx.loop():
                x0, eps = yield x, nodes.node(i)
                mid, a_t, s_t = plan[i]
                if mid is not None:  # eps at the DDIM midpoint u = alpha_m x0_hat + sigma_m eps_hat
                    x0, eps = yield mid.alpha * x0 + mid.sigma * eps, mid
                x = (
                    a_t * (x - nodes.sigma[i] * eps) / nodes.alpha[i] + s_t * eps
                    if mid is not None
                    else a_t * x0 + s_t * eps
                )
                ctx.emit(i, x, x0)
            return x

    register(ExplicitMidpoint)
    try:
        yield ExplicitMidpoint
    finally:
        del base._REGISTRY[ExplicitMidpoint.name]


def test_a_registered_solver_is_one_class(midpoint_solver: type[Solver]) -> None:
    """The registered class is listed, planned (NFE before the run), run by ``sample`` and the k-diffusion signature,
    and is second order on the exact target."""
    from fewstep.integrations.kdiffusion import make_sampler

    name = midpoint_solver.name
    assert name in {info.name for info in fewstep.solvers.available()}
    model, x = TARGET.model(VP, "epsilon"), noise()
    calls = fewstep.CallCount()
    out = fewstep.sample(model, x, VP, name, nfe=11, calls=calls)  # 5 midpoint steps and the last step to 0
    assert calls.nfe == 11 and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="possible values"):
        fewstep.sample(model, x, VP, name, nfe=10)
    edm = fewstep.EDM()
    sigmas = torch.cat(
        [torch.exp(-edm.lambda_(fewstep.spacing.model_times(edm, 6, "karras"))), torch.zeros(1, dtype=F64)]
    )
    k_out = make_sampler(name)(lambda x_, s_: TARGET.model(edm, "sample")(x_, s_), x * 80.0, sigmas)
    assert bool(torch.isfinite(k_out).all())
    # second order: the error at the end of a fixed interval falls about 4x per halving of the step
    times = [fewstep.spacing.model_times(VP, n + 1, "logsnr", shift=1.0) for n in (8, 16, 32)]
    ref = fewstep.sample(
        model, x, VP, "dpmpp_3m", spacing=fewstep.spacing.model_times(VP, 2001, "logsnr"), final="t_min"
    )
    errs = [float((fewstep.sample(model, x, VP, name, spacing=t, final="t_min") - ref).norm()) for t in times]
    assert 3.0 < errs[0] / errs[1] < 5.5 and 3.0 < errs[1] / errs[2] < 5.5, errs


def test_a_shared_denoiser_serves_concurrent_runs() -> None:
    """The run owns its counts and pending checks: two threads sampling through one Denoiser each spend exactly their
    own NFE and get the single-threaded result (a counter on the shared Denoiser used to mix the runs up)."""
    import threading

    denoiser = fewstep.Denoiser(TARGET.model(VP, "epsilon"), VP)
    want = {seed: fewstep.sample(denoiser, noise(seed=seed), solver="dpmpp_3m", nfe=10) for seed in range(4)}
    got: dict[int, Tensor] = {}
    counts: dict[int, fewstep.CallCount] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for _ in range(20):
                calls = fewstep.CallCount()
                got[seed] = fewstep.sample(denoiser, noise(seed=seed), solver="dpmpp_3m", nfe=10, calls=calls)
                counts[seed] = calls
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for seed in range(4):
        torch.testing.assert_close(got[seed], want[seed], rtol=0, atol=0)
        assert counts[seed].nfe == 10
