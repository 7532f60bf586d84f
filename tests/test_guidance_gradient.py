"""Loss-gradient guidance (universal guidance's forward and backward steps), FlowChef's vector-field steering,
event guidance and gradient-free classifier guidance, against closed forms on Gaussian data.

For data ``N(m, S^2)`` and the loss ``L = (a x0 - y)^2 / (2 r^2)`` the tilted distribution ``p(x0) exp(-L)`` is the
Gaussian posterior ``N(mp, Sp^2)``, ``1/Sp^2 = 1/S^2 + a^2/r^2``, ``mp = Sp^2 (m/S^2 + a y/r^2)``. Given ``x_t``,
``x0 ~ N(x0_hat, C)`` with ``C = S^2 k^2 / (S^2 + k^2)`` (k = sigma_t/alpha_t), so the posterior denoiser is the
Kalman update ``x0_hat - C a (a x0_hat - y) / (a^2 C + r^2)``: the guided rules reproduce it exactly at the scale
``r^2 / (a^2 C + r^2)`` (forward step, with or without the network's Jacobian) or ``C r^2 / (a^2 C + r^2)``
(FlowChef's step on x0_hat), and a run then equals, to rounding, the unguided run of the posterior's own model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.guidance import (
    EventLoss,
    FlowSteering,
    GradientFreeClassifierGuidance,
    LossGuidance,
    event_guidance,
)
from fewstep.guidance.loss_steps import NonFiniteGuidance

F64 = torch.float64
M, S, A, Y, R = 0.5, 1.3, 2.0, 3.0, 0.7  # prior N(M, S^2); loss (A x0 - Y)^2 / (2 R^2)
PRECISION = 1 / S**2 + A**2 / R**2
SP, MP = PRECISION**-0.5, (M / S**2 + A * Y / R**2) / PRECISION  # the posterior N(MP, SP^2)


def gaussian_model(schedule: fewstep.NoiseSchedule, mean: float, std: float, prediction: str = "epsilon"):
    """The exact, differentiable network of data N(mean, std^2 I), predicting eps or the flow velocity."""

    def model(x: Tensor, time: Tensor, **_: object) -> Tensor:
        t = time.to(F64)
        alpha = schedule.alpha(t).reshape(-1, *([1] * (x.ndim - 1)))
        sigma = schedule.sigma(t).reshape(alpha.shape)
        var = alpha**2 * std**2 + sigma**2
        eps = sigma / var * (x - alpha * mean)
        x0 = mean + alpha * std**2 / var * (x - alpha * mean)
        return eps if prediction == "epsilon" else schedule.dalpha(t).reshape(alpha.shape) * x0 + eps

    return model


def loss(x0: Tensor) -> Tensor:
    return (A * x0 - Y).square().flatten(1).sum(1) / (2 * R**2)


def posterior_var(k: float) -> float:
    return S * S if math.isinf(k) else S * S * k * k / (S * S + k * k)


def kalman_scale(k: float) -> float:
    """The exact forward-step scale ``r^2 / (a^2 C + r^2)``."""
    return R**2 / (A**2 * posterior_var(k) + R**2)


def noise(n: int, dim: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


SOLVERS = [("ddim", 8), ("dpmpp_2m", 8), ("heun", 9), ("unipc_bh2", 8), ("ddpm", 8)]


@pytest.mark.parametrize("through_network", [True, False])
@pytest.mark.parametrize(("solver", "nfe"), SOLVERS)
def test_forward_step_is_the_posterior_denoiser(solver: str, nfe: int, through_network: bool) -> None:
    sched, x = fewstep.VP(), noise(64)
    exact = fewstep.sample(gaussian_model(sched, MP, SP), x, sched, solver, nfe=nfe, generator=gen())
    rule = LossGuidance(loss, scale=kalman_scale, through_network=through_network, data_std=S)
    calls = fewstep.CallCount()
    got = fewstep.sample(
        gaussian_model(sched, M, S), x, sched, solver, nfe=nfe, generator=gen(), guidance=rule, calls=calls
    )
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-10)
    assert (calls.network, calls.requests) == (nfe, nfe)
    assert calls.backward == (nfe if through_network else 0)
    assert calls.nfe == (2 * nfe if through_network else nfe)


@pytest.mark.parametrize("through_network", [True, False])
def test_constant_scale_moves_the_mean_towards_the_posterior(through_network: bool) -> None:
    sched, x = fewstep.VP(), noise(1000, dim=1)
    model = gaussian_model(sched, M, S)
    plain = fewstep.sample(model, x, sched, "dpmpp_2m", nfe=10)
    rule = LossGuidance(loss, scale=0.3, through_network=through_network)  # data_std left at 1, not S
    guided = fewstep.sample(model, x, sched, "dpmpp_2m", nfe=10, guidance=rule)
    before, after = abs(float(plain.mean()) - MP), abs(float(guided.mean()) - MP)
    assert before > 0.8  # the unguided samples follow the prior
    assert after < 0.2 * before  # measured 0.05 vs 0.92
    assert abs(float(guided.std()) - SP) < 0.15


def test_backward_steps_descend_on_the_prediction() -> None:
    sched = fewstep.VP()
    lr, n = 0.02, 3
    rule = LossGuidance(loss, scale=0.0, backward_steps=n, backward_lr=lr)
    guided = fewstep.Denoiser(gaussian_model(sched, M, S), sched, guidance=rule)
    plain = fewstep.Denoiser(gaussian_model(sched, M, S), sched)
    x = noise(5)
    p = guided.point(0.4, 5, x.device, F64)
    x0, eps = guided(x, p)
    x0_plain, _ = plain(x, p)
    # each step x0 <- x0 - lr a (a x0 - y) / r^2 contracts towards y / a by (1 - lr a^2 / r^2)
    expected = Y / A + (1 - lr * A**2 / R**2) ** n * (x0_plain - Y / A)
    torch.testing.assert_close(x0, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.alpha * x0 + p.sigma * eps, x, rtol=1e-12, atol=1e-12)  # the state is kept


def test_sample_under_no_grad() -> None:
    sched, x = fewstep.VP(), noise(16)
    rule = LossGuidance(loss, scale=kalman_scale)
    with torch.no_grad():
        got = fewstep.sample(gaussian_model(sched, M, S), x, sched, "ddim", nfe=6, guidance=rule)
    exact = fewstep.sample(gaussian_model(sched, MP, SP), x, sched, "ddim", nfe=6)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-10)
    assert not got.requires_grad


# --- FlowChef -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("solver", "nfe"), [("euler", 8), ("dpmpp_2m", 8), ("heun", 9)])
def test_flow_steering_is_the_posterior_field(solver: str, nfe: int) -> None:
    flow, x = fewstep.Flow(), noise(64)

    def step(k: float) -> float:  # C r^2 / (a^2 C + r^2): the Kalman gain as a step on x0_hat
        return posterior_var(k) * kalman_scale(k)

    exact = fewstep.sample(gaussian_model(flow, MP, SP, "velocity"), x, flow, solver, nfe=nfe)
    calls = fewstep.CallCount()
    rule = FlowSteering(loss, scale=step)
    got = fewstep.sample(gaussian_model(flow, M, S, "velocity"), x, flow, solver, nfe=nfe, guidance=rule, calls=calls)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-10)
    assert (calls.network, calls.backward) == (nfe, 0)


def test_flow_steering_steps_and_velocity() -> None:
    flow = fewstep.Flow()
    s, n = 0.03, 4
    model = gaussian_model(flow, M, S, "velocity")
    guided = fewstep.Denoiser(model, flow, guidance=FlowSteering(loss, scale=s, steps=n))
    x = noise(5)
    p = guided.point(0.6, 5, x.device, F64)
    x0, eps = guided(x, p)
    x0_plain, eps_plain = fewstep.Denoiser(model, flow)(x, p)
    expected = Y / A + (1 - s * A**2 / R**2) ** n * (x0_plain - Y / A)
    torch.testing.assert_close(x0, expected, rtol=1e-12, atol=1e-12)
    # the velocity eps - x0 is steered by -(x0 move) / t; the state is kept
    torch.testing.assert_close((eps - x0) - (eps_plain - x0_plain), -(x0 - x0_plain) / 0.6, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((1 - 0.6) * x0 + 0.6 * eps, x, rtol=1e-12, atol=1e-12)


def test_flow_steering_moves_towards_the_posterior_at_a_constant_step() -> None:
    flow, x = fewstep.Flow(), noise(1000, dim=1)
    model = gaussian_model(flow, M, S, "velocity")
    got = fewstep.sample(model, x, flow, "euler", nfe=10, guidance=FlowSteering(loss, scale=0.05, steps=3))
    assert abs(float(got.mean()) - MP) < 0.15  # measured 0.07; the prior's mean is 0.93 away


def test_flow_steering_refuses_diffusion_schedules_before_the_network() -> None:
    sched, calls = fewstep.VP(), fewstep.CallCount()
    with pytest.raises(ValueError, match=r"fewstep\.Flow.*LossGuidance\(loss, scale=0, backward_steps"):
        fewstep.sample(
            gaussian_model(sched, M, S), noise(4), sched, "ddim", nfe=4, guidance=FlowSteering(loss), calls=calls
        )
    assert calls.network == 0


# --- events --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through_network", [True, False])
def test_event_guidance_samples_the_truncated_gaussian(through_network: bool) -> None:
    sched, x, b = fewstep.VP(), noise(2000, dim=1), 0.5
    rule = event_guidance(lambda x0: x0[:, 0] - b, data_std=1.0, through_network=through_network)
    calls = fewstep.CallCount()
    got = fewstep.sample(gaussian_model(sched, 0.0, 1.0), x, sched, "dpmpp_2m", nfe=20, guidance=rule, calls=calls)
    hazard = math.exp(-b * b / 2) / math.sqrt(2 * math.pi) / (0.5 * math.erfc(b / math.sqrt(2)))
    mean, var = hazard, 1 + b * hazard - hazard**2  # N(0, 1) truncated to x >= b
    assert float((got >= b).double().mean()) > 0.995
    assert abs(float(got.mean()) - mean) < 0.01  # measured 0.002 (the sample mean's own error is ~0.012 / sqrt(5))
    assert abs(float(got.var()) - var) < 0.03
    assert calls.backward == (20 if through_network else 0)


def test_event_loss_is_the_gaussian_probability() -> None:
    w, b, sigma = torch.tensor([1.0, -2.0], dtype=F64), 0.3, 0.8
    x0 = noise(4).requires_grad_(True)
    got = EventLoss(lambda v: v @ w - b, data_std=2.0)(x0, sigma=sigma)
    c = 4.0 * sigma**2 / (4.0 + sigma**2)
    z = (x0.detach() @ w - b) / math.sqrt(c * float(w @ w))
    expected = -torch.log(0.5 * torch.erfc(-z / math.sqrt(2)))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)


# --- gradient-free classifier guidance -----------------------------------------------------------------------------

CLASS_MEANS = [-2.0, 0.0, 2.0]


def class_model(schedule: fewstep.NoiseSchedule):
    """The exact eps network of class k ~ N(CLASS_MEANS[k], 1); ``class_labels`` indices (B,) or one-hot (B, 3)."""
    means = torch.tensor(CLASS_MEANS, dtype=F64)

    def model(x: Tensor, time: Tensor, class_labels: Tensor) -> Tensor:
        labels = class_labels if class_labels.ndim == 1 else class_labels.argmax(1)
        t = time.to(F64)
        alpha, sigma = schedule.alpha(t).reshape(-1, 1), schedule.sigma(t).reshape(-1, 1)
        mu = means[labels].reshape(-1, 1)
        return sigma / (alpha**2 + sigma**2) * (x - alpha * mu)

    return model


def classifier(x0: Tensor) -> Tensor:
    return -0.5 * (x0 - torch.tensor(CLASS_MEANS, dtype=x0.dtype)).square()


@pytest.mark.parametrize("one_hot", [False, True])
def test_gfcg_evaluation_by_hand(one_hot: bool) -> None:
    sched, t, scale = fewstep.VP(), 0.35, 1.7
    xs, targets = [-0.9, 0.2, 1.4, 3.0], [1, 1, 2, 0]
    labels = torch.tensor(targets)
    if one_hot:
        labels = torch.nn.functional.one_hot(labels, 3).to(F64)
    rule = GradientFreeClassifierGuidance(classifier, scale=scale)
    den = fewstep.Denoiser(class_model(sched), sched, model_kwargs={"class_labels": labels}, guidance=rule)
    x = torch.tensor(xs, dtype=F64).reshape(-1, 1)
    p = den.point(t, 4, x.device, F64)
    x0, eps = den(x, p)
    tt = torch.tensor(t, dtype=F64)
    alpha, sigma = float(sched.alpha(tt)), float(sched.sigma(tt))
    for i, (xi, c) in enumerate(zip(xs, targets, strict=True)):

        def denoised(k: int, xi: float = xi) -> float:
            return CLASS_MEANS[k] + alpha / (alpha**2 + sigma**2) * (xi - alpha * CLASS_MEANS[k])

        d_c = denoised(c)
        logits = [-0.5 * (d_c - mu) ** 2 for mu in CLASS_MEANS]
        probs = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
        ref = max((k for k in range(3) if k != c), key=lambda k: probs[k])
        w = scale * min(1.0, probs[ref] / probs[c])
        expected = d_c + w * (d_c - denoised(ref))
        assert float(x0[i, 0]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-12, atol=1e-12)


def test_gfcg_raises_class_accuracy_and_counts_two_calls() -> None:
    sched, n = fewstep.VP(), 1000
    x, labels = noise(n, dim=1), torch.ones(n, dtype=torch.long)  # class 1, N(0, 1), between the others
    accuracy = {}
    for scale in (0.0, 1.0):
        calls = fewstep.CallCount()
        rule = GradientFreeClassifierGuidance(classifier, scale=scale)
        got = fewstep.sample(
            class_model(sched),
            x,
            sched,
            "dpmpp_2m",
            nfe=8,
            model_kwargs={"class_labels": labels},
            guidance=rule,
            calls=calls,
        )
        accuracy[scale] = float((classifier(got).argmax(1) == 1).double().mean())
        assert (calls.network, calls.branches, calls.requests) == ((16, 16, 8) if scale else (8, 8, 8))
    assert abs(accuracy[0.0] - 0.683) < 0.05  # P(|x| < 1) for N(0, 1)
    assert accuracy[1.0] > 0.93  # measured 0.977


def test_gfcg_errors_before_any_call() -> None:
    sched, calls = fewstep.VP(), fewstep.CallCount()
    rule = GradientFreeClassifierGuidance(classifier, label_key="y")
    with pytest.raises(ValueError, match=r"label_key: 'y' is not among"):
        fewstep.sample(
            class_model(sched),
            noise(4, 1),
            sched,
            "ddim",
            nfe=4,
            guidance=rule,
            calls=calls,
            model_kwargs={"class_labels": torch.ones(4, dtype=torch.long)},
        )
    assert calls.network == 0
    bad = GradientFreeClassifierGuidance(lambda x0: x0[:, 0], scale=1.0)
    with pytest.raises(ValueError, match=r"classifier: must return logits of shape \(B, K\)"):
        fewstep.sample(
            class_model(sched),
            noise(4, 1),
            sched,
            "ddim",
            nfe=4,
            guidance=bad,
            model_kwargs={"class_labels": torch.ones(4, dtype=torch.long)},
        )
    with pytest.raises(TypeError, match="classifier: must be callable"):
        GradientFreeClassifierGuidance("resnet")  # type: ignore[arg-type]


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scale": -1.0}, ValueError, r"scale: must be >= 0"),
        ({"scale": math.nan}, ValueError, r"scale: must be finite"),
        ({"scale": True}, TypeError, r"scale: must be a real number"),
        ({"scale": "3"}, TypeError, r"scale: must be a real number"),
        ({"backward_steps": -1}, ValueError, r"backward_steps: must be >= 0"),
        ({"backward_steps": 1.5}, TypeError, r"backward_steps: must be an integer"),
        ({"backward_lr": -0.1}, ValueError, r"backward_lr: must be >= 0"),
        ({"through_network": 1}, TypeError, r"through_network: must be True or False"),
        ({"data_std": 0.0}, ValueError, r"data_std: must be > 0"),
        ({"loss_kwargs": [1]}, TypeError, r"loss_kwargs: must be a mapping"),
    ],
)
def test_option_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LossGuidance(loss, **kwargs)


def test_option_errors_of_the_other_rules() -> None:
    with pytest.raises(TypeError, match=r"loss: must be callable"):
        LossGuidance("mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps: must be >= 1"):
        FlowSteering(loss, steps=0)
    with pytest.raises(ValueError, match=r"scale: must be >= 0"):
        FlowSteering(loss, scale=-0.5)
    with pytest.raises(ValueError, match=r"data_std: must be > 0"):
        event_guidance(lambda x0: x0[:, 0], data_std=-1.0)


def run(rule: object, sched: fewstep.NoiseSchedule | None = None, calls: fewstep.CallCount | None = None) -> Tensor:
    sched = sched or fewstep.VP()
    return fewstep.sample(gaussian_model(sched, M, S), noise(4), sched, "ddim", nfe=4, guidance=rule, calls=calls)


@pytest.mark.parametrize("through_network", [True, False])
def test_loss_shape_and_type_errors_name_the_evaluation(through_network: bool) -> None:
    with pytest.raises(
        ValueError, match=r"loss: must return one value per sample, shape \(4,\), got \(\) at evaluation 1"
    ):
        run(LossGuidance(lambda x0: x0.square().sum(), through_network=through_network))
    with pytest.raises(ValueError, match=r"shape \(4,\), got \(4, 2\) at evaluation 1 \(t = 1\)"):
        run(LossGuidance(lambda x0: x0.square(), through_network=through_network))
    with pytest.raises(TypeError, match=r"loss: must return a floating-point tensor"):
        run(LossGuidance(lambda x0: 3.0, through_network=through_network))


@pytest.mark.parametrize("through_network", [True, False])
def test_non_finite_gradient_names_the_evaluation_and_time(through_network: bool) -> None:
    def kink(x0: Tensor) -> Tensor:  # finite value 0, but sqrt(|u|) has no finite slope at u = 0
        return (x0 - x0.detach()).abs().sqrt().sum(1)

    with pytest.raises(NonFiniteGuidance, match=r"loss: the gradient of the loss is NaN/inf at evaluation 1 \(t = 1\)"):
        run(LossGuidance(kink, through_network=through_network))


def test_scale_callable_errors_name_the_noise_level_before_the_network() -> None:
    calls = fewstep.CallCount()
    with pytest.raises(ValueError, match=r"scale: scale\(sigma=.*\) = -1.0 at evaluation 1 \(t = 1\); must be >= 0"):
        run(LossGuidance(loss, scale=lambda sigma: -1.0), calls=calls)
    assert calls.network == 0
    with pytest.raises(ValueError, match=r"scale: must be finite, got nan from scale\(sigma="):
        run(LossGuidance(loss, scale=lambda sigma: math.nan))


def test_through_network_needs_a_differentiable_model() -> None:
    sched = fewstep.VP()
    exact = GaussianMixture.single(2, M, S).model(sched)  # computes without autograd
    rule = LossGuidance(loss, through_network=True)
    with pytest.raises(TypeError, match=r"through_network: the model's output carries no autograd graph"):
        fewstep.sample(exact, noise(4), sched, "ddim", nfe=4, guidance=rule)
    fewstep.sample(exact, noise(4), sched, "ddim", nfe=4, guidance=LossGuidance(loss, through_network=False))


def test_inference_mode_is_refused_before_any_call() -> None:
    calls = fewstep.CallCount()
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch.inference_mode\(\) forbids"):
        run(LossGuidance(loss), calls=calls)
    assert calls.network == 0


def test_forward_step_at_pure_noise_needs_a_vanishing_scale() -> None:
    flow = fewstep.Flow()  # starts at t = 1, alpha = 0
    model = gaussian_model(flow, M, S, "velocity")
    with pytest.raises(ValueError, match=r"infinite at alpha = 0 through the network"):
        fewstep.sample(model, noise(4), flow, "euler", nfe=4, guidance=LossGuidance(loss, scale=1.0))
    vanishing = LossGuidance(loss, scale=lambda sigma: 0.0 if math.isinf(sigma) else 0.5)
    assert torch.isfinite(fewstep.sample(model, noise(4), flow, "euler", nfe=4, guidance=vanishing)).all()
    without = LossGuidance(loss, scale=0.5, through_network=False)  # bounded step: fine at alpha = 0
    assert torch.isfinite(fewstep.sample(model, noise(4), flow, "euler", nfe=4, guidance=without)).all()
