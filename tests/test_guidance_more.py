"""State-moving rules (ViBiDSampler's bidirectional step, universal guidance's self-recurrence, COW's one-way
diffusion and cycles) and TSDiff's self-guidance, against hand-computed steps and exact Gaussian answers.

- Bidirectional: for two Gaussian conditionals ``N(mf, S^2 I)``, ``N(mb, S^2 I)`` the run converges (first order)
  to ``N((mf + mb)/2, S^2 I)``, the law of the reverse SDE with the averaged score.
- Self-recurrence: the recurrence re-noises ``alpha x0 + sigma (rho eps + sqrt(1 - rho^2) z)``; one step of a run
  is recomputed by hand, and on exact Gaussian data the moves (Langevin moves, to first order) keep the law.
- One-way: for data with independent coordinates the unobserved coordinate follows the unconditional run (its law
  is the exact posterior's).
- Self-guidance: at ``scale = 1 / (C(sigma) + r^2)`` the guided run of Gaussian data is the exact posterior's own
  unguided run, to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance import (
    Bidirectional,
    CFGPlusPlus,
    ClassifierFreeGuidance,
    ObservationLoss,
    OneWayDiffusion,
    SelfGuidance,
    SelfRecurrence,
)
from fewstep.guidance.cyclic import cyclic_sample
from fewstep.guidance.refine import refine
from fewstep.posterior import Mask

F64 = torch.float64
VP = fewstep.VP()
MF, MB, STD = [2.0, 0.0], [0.0, 2.0], 0.5


def two_class_model(mf: list[float] = MF, mb: list[float] = MB, std: float = STD):
    """The exact network of two Gaussian classes: ``y = 0`` is ``N(mf, std^2 I)``, ``y = 1`` is ``N(mb, std^2 I)``,
    ``y = -1`` their equal mixture."""
    a = GaussianMixture.single(2, mf, std).model(VP)
    b = GaussianMixture.single(2, mb, std).model(VP)
    both = GaussianMixture([mf, mb], std).model(VP)

    def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return torch.where((y == 0)[:, None], a(x, t), torch.where((y == 1)[:, None], b(x, t), both(x, t)))

    return model


def noise(n: int, seed: int = 0, dim: int = 2) -> Tensor:
    return torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels(n: int, value: int) -> Tensor:
    return torch.full((n,), value, dtype=torch.long)


def logsnr_step(nfe: int) -> float:
    lam = VP.lambda_(torch.tensor([VP.t_max, VP.t_min], dtype=F64))
    return float(lam[1] - lam[0]) / (nfe - 1)


def point_at(model, x: Tensor, t: float, **kwargs: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """``(x0_hat, eps_hat, alpha, sigma)`` of the eps-model ``model`` at ``x`` and schedule time ``t``."""
    tt = torch.full((x.shape[0],), t, dtype=F64)
    alpha, sigma = float(VP.alpha(t)), float(VP.sigma(t))
    eps = model(x, tt, **kwargs)
    return (x - sigma * eps) / alpha, eps, alpha, sigma


# --- Bidirectional (ViBiDSampler) -------------------------------------------------------------------------------------


def run_bidirectional(n: int, nfe: int, **rule_options) -> tuple[Tensor, fewstep.CallCount]:
    calls = fewstep.CallCount()
    rule = Bidirectional({"y": labels(n, 0)}, {"y": labels(n, 1)}, h=logsnr_step(nfe), generator=gen(1), **rule_options)
    x = fewstep.sample(
        two_class_model(), noise(n), VP, "ddim", nfe=nfe, spacing="logsnr", model_kwargs={"y": labels(n, 0)},
        guidance=rule, calls=calls,
    )  # fmt: skip
    return x, calls


def test_bidirectional_converges_to_the_average_of_two_gaussians() -> None:
    target = torch.tensor([1.0, 1.0], dtype=F64)  # (MF + MB) / 2, std STD
    errors = []
    for nfe in (10, 80):
        x, calls = run_bidirectional(3000, nfe)
        assert (calls.network, calls.branches, calls.requests) == (2 * nfe, 2 * nfe, nfe)
        errors.append(float((x.mean(0) - target).norm()))
    assert errors[1] < 0.07 < errors[0]  # 0.033 at NFE 80 (3 standard errors: 0.03)
    x, _ = run_bidirectional(3000, 80)
    assert torch.allclose(x.std(0), torch.full((2,), STD, dtype=F64), atol=0.04)


def test_bidirectional_one_step_by_hand_with_cfg_pp() -> None:
    n, lam, nfe = 5, 0.7, 1
    model, x_t = two_class_model(), noise(n, 3)
    null, yf, yb = labels(n, -1), labels(n, 0), labels(n, 1)
    rule = Bidirectional({"y": yf}, {"y": yb}, h=0.4, scale=lam, uncond_kwargs={"y": null}, generator=gen(2))
    calls = fewstep.CallCount()
    t0 = 0.6
    out = fewstep.sample(
        model, x_t, VP, "ddim", spacing=[t0], model_kwargs={"y": yf}, guidance=rule, calls=calls
    )  # one request, the step to the data: the result is the backward pass's x0_hat
    assert (calls.network, calls.branches) == (2 * nfe, 4 * nfe)
    x0_u, eps_u, alpha, sigma = point_at(model, x_t, t0, y=null)
    x0_c, _, _, _ = point_at(model, x_t, t0, y=yf)
    x0_f = x0_u + lam * (x0_c - x0_u)  # CFG++: guided clean sample, unconditional noise
    rho, z = math.exp(-0.4), torch.randn(x_t.shape, generator=gen(2), dtype=F64)
    moved = alpha * x0_f + sigma * (rho * eps_u + math.sqrt(1 - rho * rho) * z)
    x0_u, _, _, _ = point_at(model, moved, t0, y=null)
    x0_c, _, _, _ = point_at(model, moved, t0, y=yb)
    torch.testing.assert_close(out, x0_u + lam * (x0_c - x0_u), rtol=1e-10, atol=1e-10)


def test_bidirectional_flip_is_applied_around_the_backward_pass() -> None:
    n, nfe = 64, 6

    def swap(x: Tensor) -> Tensor:
        return x.flip(-1)

    plain = two_class_model()
    mirrored_b = two_class_model(MF, MB[::-1])  # class 1 mirrored: flip . D_b . flip is the original class 1

    def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return plain(x, t, y)

    kwargs = {"y": labels(n, 0)}
    common = dict(spacing="logsnr", model_kwargs=kwargs)
    base = Bidirectional({"y": labels(n, 0)}, {"y": labels(n, 1)}, h=0.5, generator=gen(4))
    x = fewstep.sample(model, noise(n), VP, "ddim", nfe=nfe, guidance=base, **common)

    def flipped_model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return torch.where((y == 1)[:, None], mirrored_b(x, t, y), plain(x, t, y))

    flipped = Bidirectional({"y": labels(n, 0)}, {"y": labels(n, 1)}, h=0.5, flip=swap, generator=gen(4))
    y = fewstep.sample(flipped_model, noise(n), VP, "ddim", nfe=nfe, guidance=flipped, **common)
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


# --- Self-recurrence (universal guidance) -----------------------------------------------------------------------------


def test_self_recurrence_one_step_by_hand_and_counts() -> None:
    n, w, h, t0 = 6, 3.0, 0.3, 0.5
    model, x_t = two_class_model(), noise(n, 5)
    cond, null = labels(n, 0), labels(n, -1)
    cfg = ClassifierFreeGuidance(w, {"y": null})
    calls = fewstep.CallCount()
    rule = SelfRecurrence(cfg, repeats=3, h=h, generator=gen(7))
    out = fewstep.sample(model, x_t, VP, "ddim", spacing=[t0], model_kwargs={"y": cond}, guidance=rule, calls=calls)
    assert (calls.network, calls.branches, calls.requests) == (3, 6, 1)

    def guided(x: Tensor) -> tuple[Tensor, Tensor, float, float]:
        x0_u, eps_u, alpha, sigma = point_at(model, x, t0, y=null)
        x0_c, eps_c, _, _ = point_at(model, x, t0, y=cond)
        return x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), alpha, sigma

    g, rho, x = gen(7), math.exp(-h), x_t
    for _ in range(2):
        x0, eps, alpha, sigma = guided(x)
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = alpha * x0 + sigma * (rho * eps + math.sqrt(1 - rho * rho) * z)
    torch.testing.assert_close(out, guided(x)[0], rtol=1e-10, atol=1e-10)


def test_self_recurrence_takes_the_runs_own_step_by_default() -> None:
    """``h=None``: no move at the first request; at the second, ``h`` is the log-SNR gap from the first (by hand)."""
    n, w, t0, t1 = 5, 2.0, 0.8, 0.4
    model, x_t = two_class_model(), noise(n, 11)
    cond, null = labels(n, 0), labels(n, -1)
    cfg = ClassifierFreeGuidance(w, {"y": null})
    calls = fewstep.CallCount()
    rule = SelfRecurrence(cfg, repeats=3, generator=gen(5))
    out = fewstep.sample(model, x_t, VP, "ddim", spacing=[t0, t1], model_kwargs={"y": cond}, guidance=rule, calls=calls)
    assert (calls.network, calls.requests) == (1 + 3, 2)

    def guided(x: Tensor, t: float) -> tuple[Tensor, Tensor, float, float]:
        x0_u, eps_u, alpha, sigma = point_at(model, x, t, y=null)
        x0_c, eps_c, _, _ = point_at(model, x, t, y=cond)
        return x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), alpha, sigma

    x0, eps, _, _ = guided(x_t, t0)
    a1, s1 = float(VP.alpha(t1)), float(VP.sigma(t1))
    x = a1 * x0 + s1 * eps  # the plain DDIM step to t1
    lam = VP.lambda_(torch.tensor([t0, t1], dtype=F64))
    rho, g = math.exp(-float(lam[1] - lam[0])), gen(5)
    for _ in range(2):
        x0, eps, alpha, sigma = guided(x, t1)
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = alpha * x0 + sigma * (rho * eps + math.sqrt(1 - rho * rho) * z)
    torch.testing.assert_close(out, guided(x, t1)[0], rtol=1e-10, atol=1e-10)
    fixed = SelfRecurrence(cfg, repeats=3, h=0.05, generator=gen(5))  # a given h is used from the first request
    calls = fewstep.CallCount()
    fewstep.sample(model, x_t, VP, "ddim", spacing=[t0, t1], model_kwargs={"y": cond}, guidance=fixed, calls=calls)
    assert calls.network == 2 * 3


def test_self_recurrence_of_one_is_the_plain_run_and_keeps_gaussian_data() -> None:
    data = GaussianMixture.single(2, [1.0, -0.5], 0.7)
    model, start = data.model(VP), noise(4000, 8)
    plain = fewstep.sample(model, start, VP, "ddim", nfe=12)
    once = fewstep.sample(model, start, VP, "ddim", nfe=12, guidance=SelfRecurrence(repeats=1))
    torch.testing.assert_close(plain, once, rtol=0, atol=0)
    calls = fewstep.CallCount()
    moved = fewstep.sample(
        model, start, VP, "ddim", nfe=40, guidance=SelfRecurrence(repeats=3, h=0.05, generator=gen(9)), calls=calls
    )
    assert calls.network == 3 * 40  # VP's t_max has alpha > 0: every request recurs
    torch.testing.assert_close(moved.mean(0), torch.tensor([1.0, -0.5], dtype=F64), atol=0.05, rtol=0)
    torch.testing.assert_close(moved.std(0), torch.full((2,), 0.7, dtype=F64), atol=0.05, rtol=0)


# --- One-way diffusion (COW) ------------------------------------------------------------------------------------------


def test_one_way_keeps_independent_coordinates_and_the_condition() -> None:
    data = GaussianMixture.single(2, [0.5, -1.0], 0.8)
    y, mask = torch.tensor([[2.0, 0.0]], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    rule = OneWayDiffusion(Mask(y=y, noise_std=0.0, mask=mask), generator=gen(3))
    calls = fewstep.CallCount()
    x = fewstep.sample(data.model(VP), noise(4000, 2), VP, "ddim", nfe=30, guidance=rule, calls=calls)
    assert calls.network == 30
    plain = fewstep.sample(data.model(VP), noise(4000, 2), VP, "ddim", nfe=30)
    torch.testing.assert_close(x[:, 1], plain[:, 1], rtol=1e-12, atol=1e-12)  # the prior's (= posterior's) run
    assert float((x[:, 0] - 2.0).abs().max()) < 0.05  # the condition, up to the last step's noise


def test_cyclic_sample_counts_and_zero_repeats_is_a_plain_run() -> None:
    data = GaussianMixture.single(2, [0.5, -1.0], 0.8)
    times = fewstep.spacing.model_times(VP, 12, "logsnr")
    start = noise(16, 4)
    plain = fewstep.sample(data.model(VP), start, VP, "ddim", spacing=times)
    calls = fewstep.CallCount()
    x = cyclic_sample(data.model(VP), start, VP, times, cycle=(2, 7), repeats=0, solver="ddim", calls=calls)
    torch.testing.assert_close(x, plain, rtol=1e-12, atol=1e-12)
    assert calls.network == 12
    calls = fewstep.CallCount()
    cyclic_sample(data.model(VP), start, VP, times, cycle=(2, 7), repeats=3, solver="ddim", calls=calls)
    assert calls.network == 12 + 3 * 5


# --- Self-guidance (TSDiff) -------------------------------------------------------------------------------------------


def test_self_guidance_with_the_kalman_scale_is_the_exact_posterior_run() -> None:
    m, s, r, y_obs = 0.3, 1.2, 0.4, 1.5
    data = GaussianMixture.single(2, m, s)
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    measurement = Mask(y=torch.tensor([[y_obs, 0.0]], dtype=F64), noise_std=r, mask=mask)
    var_p = 1 / (1 / s**2 + 1 / r**2)
    post = GaussianMixture([[var_p * (m / s**2 + y_obs / r**2), m]], [1.0])  # std 1 placeholder, replaced below

    def kalman(sigma: float) -> float:
        c = s * s if math.isinf(sigma) else s * s * sigma * sigma / (s * s + sigma * sigma)
        return 1.0 / (c + r * r)

    rule = SelfGuidance(measurement, scale=kalman, through_network=False, data_std=s)
    start = noise(8, 6)
    x = fewstep.sample(data.model(VP), start, VP, "dpmpp_2m", nfe=15, guidance=rule)
    # coordinate 0: the posterior N(mp, var_p); coordinate 1: the prior. Both are Gaussian: run each exactly.
    exact0 = fewstep.sample(GaussianMixture.single(1, post.means[0, 0], math.sqrt(var_p)).model(VP), start[:, :1],
                            VP, "dpmpp_2m", nfe=15)  # fmt: skip
    exact1 = fewstep.sample(GaussianMixture.single(1, m, s).model(VP), start[:, 1:], VP, "dpmpp_2m", nfe=15)
    torch.testing.assert_close(x, torch.cat([exact0, exact1], 1), rtol=1e-9, atol=1e-9)


def test_observation_loss_mean_square_and_pinball_by_hand() -> None:
    y = torch.tensor([[1.0, 0.0, -2.0]], dtype=F64)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    x0 = torch.tensor([[0.5, 9.0, -1.0], [2.0, -9.0, -2.5]], dtype=F64)
    m = Mask(y=y, noise_std=0.1, mask=mask)
    torch.testing.assert_close(ObservationLoss(m)(x0), torch.tensor([(0.25 + 1.0) / 2, (1.0 + 0.25) / 2], dtype=F64))
    # r = y - x0 on the observed entries: (0.5, -1.0) and (-1.0, 0.5); pinball at 0.9: 0.9 r if r >= 0 else -0.1 r
    torch.testing.assert_close(ObservationLoss(m, 0.9)(x0), torch.tensor([0.45 + 0.1, 0.1 + 0.45], dtype=F64))


# --- Errors before any model call -------------------------------------------------------------------------------------


def _never(*_: object, **__: object) -> Tensor:
    raise AssertionError("the model must not be called")


@pytest.mark.parametrize(
    "rule",
    [
        SelfRecurrence(),
        Bidirectional(None, {"y": labels(4, 1)}, h=0.5),
        OneWayDiffusion(Mask(y=torch.zeros(1, 2, dtype=F64), noise_std=0.0, mask=torch.tensor([1.0, 0.0]))),
    ],
)
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "heun"])  # with and without a CFG++ form
def test_state_moving_rules_refuse_multistep_solvers(rule: object, solver: str) -> None:
    with pytest.raises(ValueError, match="ddim") as err:
        fewstep.sample(_never, noise(4), VP, solver, nfe=5, model_kwargs={"y": labels(4, 0)}, guidance=rule)
    assert "'dpmpp_2m')" not in str(err.value)  # not suggested: its CFG++ form keeps a multistep history


def test_bad_options_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="repeats"):
        SelfRecurrence(repeats=0)
    with pytest.raises(ValueError, match="h:"):
        SelfRecurrence(h=-1.0)
    with pytest.raises(ValueError, match="rule"):
        SelfRecurrence(CFGPlusPlus(0.5, {"y": labels(2, -1)}))
    with pytest.raises(ValueError, match="uncond_kwargs"):
        Bidirectional(None, None, h=0.5, scale=0.6)
    with pytest.raises(TypeError, match="flip"):
        Bidirectional(None, None, h=0.5, flip=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_std=0"):
        OneWayDiffusion(Mask(y=torch.zeros(1, 2), noise_std=0.1, mask=torch.tensor([1.0, 0.0])))
    with pytest.raises(ValueError, match="quantile"):
        SelfGuidance(Mask(y=torch.zeros(1, 2), noise_std=0.1, mask=torch.tensor([1.0, 0.0])), quantile=1.5)
    with pytest.raises(ValueError, match="cycle"):
        cyclic_sample(_never, noise(2), VP, [0.9, 0.5, 0.1], cycle=(2, 1), repeats=1)


# --- Refinement (TSDiff) ----------------------------------------------------------------------------------------------


def test_refine_converges_to_the_gaussian_minimiser_and_counts() -> None:
    m, s, y_obs, reg, levels = 0.5, 0.8, 2.0, 1.0, [0.3, 0.6]

    def eps_model(x: Tensor, time: Tensor) -> Tensor:  # the exact, differentiable eps network of N(m, s^2 I)
        t = time.to(F64)[:, None]
        alpha, sigma = VP.alpha(t), VP.sigma(t)
        return sigma / (alpha**2 * s**2 + sigma**2) * (x - alpha * m)

    c = sum(
        (float(VP.alpha(t)) * float(VP.sigma(t)) / (float(VP.alpha(t)) ** 2 * s * s + float(VP.sigma(t)) ** 2)) ** 2
        for t in levels
    )
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    measurement = Mask(y=torch.tensor([[y_obs, 0.0]], dtype=F64), noise_std=0.1, mask=mask)
    calls = fewstep.CallCount()
    y = refine(
        eps_model, torch.zeros(2000, 2, dtype=F64), VP, measurement, levels=levels, steps=150, lr=0.1, reg=reg,
        generator=gen(3), calls=calls,
    )  # fmt: skip
    assert (calls.network, calls.backward) == (150 * 2, 150 * 2)
    expected = torch.tensor([(2 * c * m + reg * y_obs) / (2 * c + reg), m], dtype=F64)
    torch.testing.assert_close(y.mean(0), expected, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="levels"):
        refine(eps_model, torch.zeros(2, 2, dtype=F64), VP, measurement, levels=[2.0])
