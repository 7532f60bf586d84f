"""Half-precision models, callbacks, NFE counting, classifier-free guidance and thresholding."""

from __future__ import annotations

import pytest
import torch
from helpers import Counting
from torch import nn

import fewstep
from fewstep.bench.targets import GaussianMixture, mixture_2d

TARGET = mixture_2d("wide")
VP = fewstep.VP()
HALF = [torch.float16, torch.bfloat16]


class HalfExact(nn.Module):
    """The exact epsilon model as a network whose parameters (and so whose computation) are half precision:
    the input is checked to arrive in that dtype and the output is rounded to it."""

    def __init__(self, target: GaussianMixture, schedule: fewstep.NoiseSchedule, dtype: torch.dtype):
        super().__init__()
        self.exact = target.model(schedule, "epsilon")
        self.scale = nn.Parameter(torch.ones((), dtype=dtype), requires_grad=False)
        self.inputs: list[tuple[torch.dtype, torch.dtype]] = []

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        self.inputs.append((x.dtype, time.dtype))
        return (self.exact(x, time) * self.scale).to(self.scale.dtype)


def noise(dtype: torch.dtype = torch.float32, n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "dpm_solver_3"])
def test_half_precision_module(dtype: torch.dtype, solver: str) -> None:
    model = HalfExact(TARGET, VP, dtype)
    states: list[torch.dtype] = []
    x32 = noise()
    out = fewstep.sample(model, x32, VP, solver, nfe=11, callback=lambda d: states.append(d["x"].dtype))
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert set(states) == {torch.float32}  # the solver state stays float32
    assert {xd for xd, _ in model.inputs} == {dtype}  # the model runs in its own dtype
    assert {td for _, td in model.inputs} == {torch.float32}  # the time is not rounded to half
    ref = fewstep.sample(TARGET.model(VP, "epsilon"), x32, VP, solver, nfe=11)
    # relative RMS error; observed 4e-4..4e-3 (float16) and 3e-3..6e-2 (bfloat16, 8 mantissa bits), largest for
    # the noise-prediction solvers (heun, dpm_solver_3), whose steps scale the rounded eps by up to sigma/alpha
    tol = 1e-2 if dtype == torch.float16 else 1e-1
    rel = float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert 0 < rel < tol  # rounded (> 0), and close


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_function_with_model_dtype(dtype: torch.dtype) -> None:
    exact = TARGET.model(VP, "v_prediction")
    seen: list[torch.dtype] = []

    def model(x, t):
        seen.append(x.dtype)
        return exact(x, t).to(x.dtype)

    denoiser = fewstep.Denoiser(model, VP, "v_prediction", model_dtype=dtype)
    x = noise()
    calls = fewstep.CallCount()
    out = fewstep.sample(denoiser, x, solver="dpmpp_3m", nfe=10, calls=calls)
    assert set(seen) == {dtype} and out.dtype == torch.float32 and calls.nfe == 10
    ref = fewstep.sample(exact, x, VP, "dpmpp_3m", nfe=10, prediction="v_prediction")
    rel = float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert 0 < rel < (1e-2 if dtype == torch.float16 else 1e-1)


@pytest.mark.parametrize("dtype", HALF)
def test_half_noise_returns_half_and_integrates_in_float32(dtype: torch.dtype) -> None:
    states: list[torch.dtype] = []
    x = noise(dtype)
    out = fewstep.sample(
        TARGET.model(VP, "epsilon"), x, VP, "dpmpp_2m", nfe=8, callback=lambda d: states.append(d["x"].dtype)
    )
    assert out.dtype == dtype and set(states) == {torch.float32}
    ref = fewstep.sample(TARGET.model(VP, "epsilon"), x.float(), VP, "dpmpp_2m", nfe=8)
    torch.testing.assert_close(out, ref.to(dtype))  # the same run, rounded once at the end


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_full_precision_dtypes(dtype: torch.dtype) -> None:
    out = fewstep.sample(TARGET.model(VP, "epsilon"), noise(dtype), VP, "dpmpp_2m", nfe=6)
    assert out.dtype == dtype


@pytest.mark.parametrize("solver", [info.name for info in fewstep.solvers.available()])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_callback_is_called_once_per_step(solver: str, final: str) -> None:
    steps = 6
    events: list[dict] = []
    x = noise(torch.float64, n=8)
    out = fewstep.sample(TARGET.model(VP, "epsilon"), x, VP, solver, steps=steps, final=final, callback=events.append)
    assert [e["i"] for e in events] == list(range(steps))
    times = [e["t"] for e in events]
    assert times[0] == VP.t_max and all(a > b for a, b in zip(times, times[1:], strict=False))
    if final == "t_min":
        assert times[-1] > VP.t_min  # the last step starts above t_min and ends there
    for e in events:
        assert set(e) == {"i", "t", "t_next", "x", "denoised"}
        assert e["x"].shape == x.shape and e["denoised"].shape == x.shape
    # t_next is the time of x: the next step's start, and at the end t_min, or None after the step to the data
    assert [e["t_next"] for e in events[:-1]] == times[1:]
    assert events[-1]["t_next"] == (None if final == "zero" else pytest.approx(VP.t_min, rel=1e-12))
    torch.testing.assert_close(events[-1]["x"], out)  # x is the state after the step
    # the first data estimate is the exact denoiser at the first time
    t0 = VP.t_max
    x0_exact, _ = TARGET.denoise(x, VP.alpha(t0), VP.sigma(t0))
    torch.testing.assert_close(events[0]["denoised"], x0_exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nfe", [1, 4, 7, 10, 25])
@pytest.mark.parametrize("solver", ["ddim", "dpm_solver_2", "dpm_solver_3", "dpmpp_3m"])
def test_the_run_counts_nfe(solver: str, nfe: int) -> None:
    model = Counting(TARGET.model(VP, "epsilon"))
    denoiser = fewstep.Denoiser(model, VP)
    calls = fewstep.CallCount()
    fewstep.sample(denoiser, noise(n=4), solver=solver, nfe=nfe, calls=calls)
    assert calls == fewstep.CallCount(network=nfe, branches=nfe, requests=nfe) and model.calls == nfe
    fewstep.sample(denoiser, noise(n=4), solver=solver, nfe=nfe, calls=calls)
    assert calls.nfe == 2 * nfe and model.calls == 2 * nfe  # the counter adds the runs given it
    fewstep.sample(denoiser, noise(n=4), solver=solver, nfe=nfe)  # a shared Denoiser counts nothing itself
    assert calls.nfe == 2 * nfe and not hasattr(denoiser, "nfe")


# --- classifier-free guidance ---------------------------------------------------------------------------


class LinearCond:
    """``out = 0.5 x + cond * time`` (cond: a (B, 2) tensor): affine in the condition; records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, time: torch.Tensor, *, cond: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        assert time.shape == (x.shape[0],) and cond.shape == x.shape
        return 0.5 * x + cond * time[:, None]


def conds(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_guidance_scale_one_is_conditional_sampling() -> None:
    c, u = conds()
    x = noise(torch.float64, n=16)
    model = LinearCond()
    guided = fewstep.sample(
        model, x, VP, "dpmpp_2m", nfe=7, model_kwargs={"cond": c}, guidance_scale=1.0, uncond_kwargs={"cond": u}
    )
    assert model.batches == [16] * 7  # no unconditional evaluations at scale 1
    plain = fewstep.sample(LinearCond(), x, VP, "dpmpp_2m", nfe=7, model_kwargs={"cond": c})
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.5])
@pytest.mark.parametrize("solver", ["ddim", "dpm_solver_2", "dpmpp_3m"])
def test_guidance_is_out_u_plus_scale_times_difference(scale: float, solver: str) -> None:
    """For a model affine in its condition, guidance at scale s equals conditioning on u + s (c - u)."""
    c, u = conds()
    x = noise(torch.float64, n=16)
    model = LinearCond()
    nfe = 9
    guided = fewstep.sample(
        model, x, VP, solver, nfe=nfe, model_kwargs={"cond": c}, guidance_scale=scale, uncond_kwargs={"cond": u}
    )
    assert model.batches == [32] * nfe  # one doubled batch per evaluation
    mixed = fewstep.sample(LinearCond(), x, VP, solver, nfe=nfe, model_kwargs={"cond": u + scale * (c - u)})
    torch.testing.assert_close(guided, mixed, rtol=1e-12, atol=1e-12)


def test_guidance_output_at_one_point() -> None:
    c, u = conds(4)
    model = LinearCond()
    den = fewstep.Denoiser(model, VP, "sample", model_kwargs={"cond": c}, guidance_scale=3.0, uncond_kwargs={"cond": u})
    x = noise(torch.float64, n=4)
    p = den.point(0.5, 4, x.device, x.dtype)
    calls = fewstep.CallCount()
    x0, _ = den.stack(calls).evaluate(x, p)  # "sample": x0 is the (guided) model output itself
    out_c, out_u = 0.5 * x + c * 0.5, 0.5 * x + u * 0.5
    torch.testing.assert_close(x0, out_u + 3.0 * (out_c - out_u), rtol=1e-14, atol=1e-14)
    assert model.batches == [8] and calls == fewstep.CallCount(network=1, branches=2, requests=1)


def test_unconditional_inputs_are_batched_first() -> None:
    """The model sees cat([uncond, cond]) for tensors; non-tensor kwargs must agree."""
    seen = {}

    def model(x, t, *, cond, mode):
        seen["cond"], seen["mode"] = cond.clone(), mode
        return torch.zeros_like(x)

    c, u = conds(3)
    den = fewstep.Denoiser(
        model, VP, model_kwargs={"cond": c, "mode": "a"}, guidance_scale=2.0, uncond_kwargs={"cond": u}
    )
    x = noise(torch.float64, n=3)
    den(x, den.point(0.5, 3, x.device, x.dtype))
    torch.testing.assert_close(seen["cond"], torch.cat([u, c]))
    assert seen["mode"] == "a"
    bad = fewstep.Denoiser(model, VP, model_kwargs={"cond": c, "mode": "a"}, guidance_scale=2.0,
                           uncond_kwargs={"cond": u, "mode": "b"})  # fmt: skip
    with pytest.raises(ValueError, match="uncond_kwargs"):
        bad(x, bad.point(0.5, 3, x.device, x.dtype))


def test_guidance_rescale_one_matches_the_conditional_std() -> None:
    c, u = conds(8)
    x = noise(torch.float64, n=8)
    outs = {}
    for phi in (0.0, 1.0, 0.3):
        den = fewstep.Denoiser(LinearCond(), VP, "sample", model_kwargs={"cond": c}, guidance_scale=5.0,
                               uncond_kwargs={"cond": u}, guidance_rescale=phi)  # fmt: skip
        outs[phi], _ = den(x, den.point(0.7, 8, x.device, x.dtype))
    out_c = 0.5 * x + c * 0.7
    torch.testing.assert_close(outs[1.0].std(dim=1), out_c.std(dim=1), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(outs[0.0].std(dim=1), out_c.std(dim=1))
    rescaled = outs[0.0] * (out_c.std(dim=1, keepdim=True) / outs[0.0].std(dim=1, keepdim=True))
    torch.testing.assert_close(outs[0.3], 0.3 * rescaled + 0.7 * outs[0.0], rtol=1e-12, atol=1e-12)


# --- thresholding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [fewstep.Threshold(), fewstep.Threshold(ratio=None)])
def test_threshold_clamps_the_data_estimate(threshold: fewstep.Threshold) -> None:
    target = mixture_2d("grid")  # modes on [-2, 2]^2: unthresholded estimates leave [-1, 1]
    x = noise(torch.float64, n=64)
    for thr, inside in ((None, False), (threshold, True)):
        denoised: list[torch.Tensor] = []
        out = fewstep.sample(
            target.model(VP, "epsilon"), x, VP, "dpmpp_2m", nfe=10, threshold=thr,
            callback=lambda d: denoised.append(d["denoised"]),  # noqa: B023
        )  # fmt: skip
        assert len(denoised) == 10
        bounded = all(bool((d.abs() <= 1.0 + 1e-12).all()) for d in denoised)
        assert bounded == inside
        if inside:  # the clean sample is a data estimate: also in [-1, 1]
            assert bool((out.abs() <= 1.0 + 1e-12).all())


def test_dynamic_threshold_formula() -> None:
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, -0.3, 0.4, 0.9]], dtype=torch.float64)
    out = fewstep.Threshold(ratio=1.0, max_value=2.5)(x0)
    # row 0: s = clamp(max |x0| = 3, 1, 2.5) = 2.5; row 1: s = clamp(0.9, 1, 2.5) = 1 (unchanged)
    torch.testing.assert_close(out[0], x0[0].clamp(-2.5, 2.5) / 2.5)
    torch.testing.assert_close(out[1], x0[1])
    with pytest.raises(ValueError, match="ratio"):
        fewstep.Threshold(ratio=1.5)
    with pytest.raises(ValueError, match="max_value"):
        fewstep.Threshold(max_value=0.0)
