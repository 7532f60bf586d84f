"""Posterior samplers (DPS, PiGDM, hard projection, RED-diff, Langevin data consistency) against exact posteriors.

With a Gaussian prior ``N(m, S^2 I)`` and ``y = A x + n``, ``n ~ N(0, s^2 I)``, the posterior is Gaussian with
covariance ``P = (I/S^2 + A^T A/s^2)^{-1}`` and mean ``P (m/S^2 + A^T y/s^2)`` (computed here from that formula).
PiGDM with ``r_t^2`` of data of scale ``S`` is exact there (its guided score is the posterior's), so its samples
match the posterior up to the solver's error; DPS's plug-in likelihood is not (its bias is asserted to be there).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.bench.targets.posterior import mixture_posterior
from fewstep.posterior import DPS, LangevinDC, Linear, Mask, Nonlinear, Operator, PiGDM, Projection, red_diff

F64 = torch.float64
D, M0, S, NOISE = 3, 0.3, 1.2, 0.3
A_MAT = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=F64)
Y = torch.tensor([[0.7, -1.1]], dtype=F64)


def mixture_model(mix: GaussianMixture, schedule: fewstep.NoiseSchedule, prediction: str = "epsilon"):
    """The exact, differentiable network of an isotropic Gaussian mixture: predicts eps or the velocity."""
    means, var, logw = mix.means, mix.stds**2, mix.weights.log()

    def model(x: Tensor, time: Tensor, **_: object) -> Tensor:
        t = time.to(F64).reshape(-1)
        shape = (-1, *([1] * (x.ndim - 1)))
        a, s = schedule.alpha(t), schedule.sigma(t)
        v = a[:, None] ** 2 * var + s[:, None] ** 2  # (B, K)
        diff = x[:, None, :] - a[:, None, None] * means  # (B, K, D)
        logits = logw - 0.5 * diff.square().sum(-1) / v - 0.5 * x.shape[1] * v.log()
        r = logits.softmax(-1)
        x0 = (r[..., None] * (means + (a[:, None] * var / v)[..., None] * diff)).sum(1)
        eps = (x - a.view(shape) * x0) / s.view(shape)
        if prediction == "epsilon":
            return eps
        return schedule.dalpha(t).view(shape) * x0 + schedule.dsigma(t).view(shape) * eps

    return model


def gaussian_posterior(a: Tensor, y: Tensor, noise_std: float) -> tuple[Tensor, Tensor]:
    prec = torch.eye(D, dtype=F64) / S**2 + a.T @ a / noise_std**2
    cov = torch.linalg.inv(prec)
    return cov @ (torch.full((D,), M0, dtype=F64) / S**2 + a.T @ y[0] / noise_std**2), cov


CASES = [  # schedule, prediction, initial noise scale
    (fewstep.VP(), "epsilon", 1.0),
    (fewstep.VP(), "velocity", 1.0),
    (fewstep.EDM(), "epsilon", 80.0),
    (fewstep.Flow(), "velocity", 1.0),
]
IDS = ["vp-eps", "vp-velocity", "edm-eps", "flow-velocity"]


def noise(n: int, scale: float = 1.0, seed: int = 1) -> Tensor:
    return scale * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.mean(0), torch.cov(x.T)


@pytest.mark.parametrize(("schedule", "prediction", "scale"), CASES, ids=IDS)
def test_pigdm_is_exact_for_gaussian_data(schedule, prediction, scale) -> None:
    prior = GaussianMixture.single(D, M0, S)
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    mean, cov = gaussian_posterior(A_MAT, Y, NOISE)
    calls = fewstep.CallCount()
    model = mixture_model(prior, schedule, prediction)
    x = fewstep.sample(model, noise(4000, scale), schedule, "dpmpp_2m", nfe=20, prediction=prediction,
                       guidance=PiGDM(meas, data_std=S), calls=calls)  # fmt: skip
    assert calls.network == 20 and calls.backward == (19 if isinstance(schedule, fewstep.Flow) else 20)
    m, c = moments(x)
    torch.testing.assert_close(m, mean, atol=0.05, rtol=0)
    torch.testing.assert_close(c, cov, atol=0.05, rtol=0)
    # without the network's Jacobian (the Gaussian one of scale S): the same field, no backward pass
    calls = fewstep.CallCount()
    x2 = fewstep.sample(model, noise(4000, scale), schedule, "dpmpp_2m", nfe=20, prediction=prediction,
                        guidance=PiGDM(meas, data_std=S, through_network=False), calls=calls)  # fmt: skip
    assert calls.backward == 0 and calls.network == 20
    torch.testing.assert_close(x2, x, atol=1e-8, rtol=0)


def test_pigdm_step_is_the_kalman_update() -> None:
    """One evaluation: the guided x0_hat is the posterior mean of x0 given x_t and y (hand-computed)."""
    schedule, prior = fewstep.VP(), GaussianMixture.single(D, M0, S)
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    den = fewstep.Denoiser(mixture_model(prior, schedule), schedule, "epsilon", guidance=PiGDM(meas, data_std=S))
    calls = fewstep.CallCount()
    stack = den.stack(calls, True)
    x = noise(5)
    p = den.point(0.4, 5, x.device, F64)
    x0, _ = stack.evaluate(x, p)
    a, sg = p.alpha, p.sigma
    c = S**2 * sg**2 / (a**2 * S**2 + sg**2)  # Var[x0 | x_t]
    prior_mean = M0 + a * S**2 / (a**2 * S**2 + sg**2) * (x - a * M0)
    gain = c * A_MAT.T @ torch.linalg.inv(c * A_MAT @ A_MAT.T + NOISE**2 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(x0, prior_mean + (Y - prior_mean @ A_MAT.T) @ gain.T)
    assert (calls.network, calls.backward) == (1, 1)


def test_pigdm_operator_uses_conjugate_gradients() -> None:
    """An Operator (forward/adjoint only) gives the same guided samples as the matrix."""
    schedule, prior = fewstep.VP(), GaussianMixture.single(D, M0, S)
    op = Operator(y=Y, noise_std=NOISE, forward_fn=lambda x: x @ A_MAT.T, adjoint_fn=lambda r: r @ A_MAT)
    model = mixture_model(prior, schedule)
    a = fewstep.sample(model, noise(50), schedule, "ddim", nfe=6, guidance=PiGDM(Linear(y=Y, noise_std=NOISE, A=A_MAT)))
    b = fewstep.sample(model, noise(50), schedule, "ddim", nfe=6, guidance=PiGDM(op))
    torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("schedule", "prediction", "scale"), CASES, ids=IDS)
def test_dps_counts_and_is_biased(schedule, prediction, scale) -> None:
    prior = GaussianMixture.single(D, M0, S)
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    mean, cov = gaussian_posterior(A_MAT, Y, NOISE)
    calls = fewstep.CallCount()
    sched = schedule if not isinstance(schedule, fewstep.Flow) else fewstep.Flow(t_max=0.999)
    x = fewstep.sample(mixture_model(prior, sched, prediction), noise(2000, scale), sched, "dpmpp_2m", nfe=20,
                       prediction=prediction, guidance=DPS(meas, scale=0.2), calls=calls)  # fmt: skip
    assert (calls.network, calls.backward) == (20, 20)
    assert bool(torch.isfinite(x).all())
    m, c = moments(x)
    # the plug-in likelihood p(y | x0_hat) is not p(y | x_t): the mean is off by far more than its standard error
    # (about 0.02 here), yet in the posterior's neighbourhood
    assert 0.1 < float((m - mean).norm()) < 0.6
    assert float(torch.linalg.matrix_norm(c - cov)) < 0.5


def test_dps_normalized_loss_and_errors() -> None:
    meas = Linear(y=Y, noise_std=0.0, A=A_MAT)
    with pytest.raises(ValueError, match="noise_std > 0"):
        DPS(meas)
    rule = DPS(meas, scale=0.5, normalized=True)
    x0 = torch.randn(4, D, dtype=F64)
    torch.testing.assert_close(rule.loss(x0), (Y - x0 @ A_MAT.T).norm(dim=1))
    with pytest.raises(ValueError, match="y: the"):
        fewstep.sample(mixture_model(GaussianMixture.single(4, 0.0, 1.0), fewstep.VP()), torch.randn(2, 4, dtype=F64),
                       fewstep.VP(), "ddim", nfe=3, guidance=rule)  # fmt: skip
    with pytest.raises(TypeError, match="measurement"):
        DPS(A_MAT)  # type: ignore[arg-type]


@pytest.mark.parametrize(("schedule", "prediction", "scale"), CASES, ids=IDS)
def test_projection_reproduces_observed_coordinates(schedule, prediction, scale) -> None:
    """Noiseless mask: observed entries equal y exactly; for N(m, S^2 I) the unobserved ones keep N(m, S^2),
    which is the exact posterior's law there (the coordinates are independent)."""
    prior = GaussianMixture.single(D, M0, S)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    y = torch.tensor([[0.123456789, 0.0, -2.0 / 3.0]], dtype=F64)
    layer = Projection(Mask(y=y, mask=mask))
    calls = fewstep.CallCount()
    x = fewstep.sample(mixture_model(prior, schedule, prediction), noise(4000, scale), schedule, "dpmpp_2m", nfe=20,
                       prediction=prediction, wrappers=[layer], calls=calls)  # fmt: skip
    assert (calls.network, calls.backward) == (20, 0)
    assert bool((x[:, [0, 2]] == y[:, [0, 2]]).all())
    assert abs(float(x[:, 1].mean()) - M0) < 0.07 and abs(float(x[:, 1].std()) - S) < 0.07
    post = mixture_posterior(prior, Mask(y=y, mask=mask))  # the exact posterior agrees (its mask variance is 0)
    torch.testing.assert_close(post.mean()[1], torch.tensor(M0, dtype=F64))


def test_projection_linear_and_errors() -> None:
    meas = Linear(y=Y, A=A_MAT)
    layer = Projection(meas)
    x = layer.project(torch.randn(6, D, dtype=F64))
    torch.testing.assert_close(x @ A_MAT.T, Y.expand(6, 2))
    schedule = fewstep.VP()
    out = fewstep.sample(mixture_model(GaussianMixture.single(D, M0, S), schedule), noise(20), schedule, "ddim",
                         nfe=8, wrappers=[layer])  # fmt: skip
    torch.testing.assert_close(out @ A_MAT.T, Y.expand(20, 2))
    with pytest.raises(ValueError, match="noiseless"):
        Projection(Linear(y=Y, noise_std=0.1, A=A_MAT))
    with pytest.raises(TypeError, match="linear measurement"):
        Projection(Nonlinear(y=Y, forward_fn=torch.tanh))


@pytest.mark.parametrize(("schedule", "prediction", "scale"), CASES, ids=IDS)
def test_red_diff_finds_the_posterior_mean(schedule, prediction, scale) -> None:
    """RED-diff is a point estimate: near the posterior mean (measured), with a spread far below the posterior's."""
    prior = GaussianMixture.single(D, M0, S)
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    mean, cov = gaussian_posterior(A_MAT, Y, NOISE)
    calls = fewstep.CallCount()
    init = noise(200, 1.0, seed=4)
    mu = red_diff(mixture_model(prior, schedule, prediction), schedule, meas, init, steps=200, lam=1.0,
                  prediction=prediction, generator=torch.Generator().manual_seed(5), calls=calls)  # fmt: skip
    assert (calls.network, calls.backward) == (200, 0)
    assert bool(torch.isfinite(mu).all())
    assert float((mu.mean(0) - mean).norm()) < 0.1
    assert float(torch.cov(mu.T).trace()) < 0.2 * float(cov.trace())


def test_red_diff_errors() -> None:
    schedule, model = fewstep.VP(), mixture_model(GaussianMixture.single(D, M0, S), fewstep.VP())
    with pytest.raises(ValueError, match="noise_std > 0"):
        red_diff(model, schedule, Linear(y=Y, A=A_MAT), noise(4))
    with pytest.raises(ValueError, match="y: the"):
        red_diff(model, schedule, Linear(y=Y, noise_std=0.1, A=A_MAT), torch.randn(4, 5, dtype=F64))
    with pytest.raises(ValueError, match="lr"):
        red_diff(model, schedule, Linear(y=Y, noise_std=0.1, A=A_MAT), noise(4), lr=-1.0)


@pytest.mark.parametrize(("schedule", "prediction", "scale"), CASES, ids=IDS)
def test_langevin_dc_gaussian(schedule, prediction, scale) -> None:
    prior = GaussianMixture.single(D, M0, S)
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    mean, cov = gaussian_posterior(A_MAT, Y, NOISE)
    dc = LangevinDC(meas, data_std=S)
    calls = fewstep.CallCount()
    x = fewstep.sample(mixture_model(prior, schedule, prediction), noise(4000, scale), schedule, dc.solver, nfe=99,
                       prediction=prediction, guidance=dc.guidance, calls=calls,
                       generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert (calls.network, calls.backward) == (99, 0)
    m, c = moments(x)
    torch.testing.assert_close(m, mean, atol=0.06, rtol=0)
    torch.testing.assert_close(c, cov, atol=0.06, rtol=0)


def test_langevin_dc_errors() -> None:
    meas = Linear(y=Y, noise_std=NOISE, A=A_MAT)
    with pytest.raises(ValueError, match="step_size"):
        LangevinDC(meas, step_size=0.0)
    with pytest.raises(ValueError, match="n_corrector"):
        LangevinDC(meas, n_corrector=0)
    with pytest.raises(TypeError, match="linear measurement"):
        LangevinDC(Nonlinear(y=Y, noise_std=0.1, forward_fn=torch.tanh))


def test_pigdm_errors() -> None:
    with pytest.raises(ValueError, match="noise_std"):
        Linear(y=Y, noise_std=-0.1, A=A_MAT)
    with pytest.raises(ValueError, match="data_std"):
        PiGDM(Linear(y=Y, noise_std=0.1, A=A_MAT), data_std=0.0)
    with pytest.raises(TypeError, match="linear measurement"):
        PiGDM(Nonlinear(y=Y, noise_std=0.1, forward_fn=torch.tanh))


def test_mask_noiseless_pigdm_matches_conditional() -> None:
    """Noiseless inpainting of N(m, S^2 I) with PiGDM: observed entries near y, unobserved ones N(m, S^2)."""
    schedule, prior = fewstep.VP(), GaussianMixture.single(D, M0, S)
    mask = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    y = torch.tensor([[0.0, 1.5, 0.0]], dtype=F64)
    x = fewstep.sample(mixture_model(prior, schedule), noise(4000), schedule, "dpmpp_2m", nfe=20,
                       guidance=PiGDM(Mask(y=y, mask=mask), data_std=S))  # fmt: skip
    assert float((x[:, 1] - 1.5).abs().max()) < 1e-3
    assert abs(float(x[:, 0].mean()) - M0) < 0.07 and abs(float(x[:, 2].std()) - S) < 0.07
    assert math.isfinite(float(x.sum()))


def test_other_measurements() -> None:
    """DPS on a non-linear measurement, Projection through conjugate gradients, LangevinDC on a noiseless mask."""
    schedule, prior = fewstep.VP(), GaussianMixture.single(D, M0, S)
    model = mixture_model(prior, schedule)
    calls = fewstep.CallCount()
    tanh = Nonlinear(y=torch.tensor([[0.5, 0.0, -0.5]], dtype=F64), noise_std=0.2, forward_fn=torch.tanh)
    x = fewstep.sample(model, noise(64), schedule, "ddim", nfe=10, guidance=DPS(tanh, scale=0.2), calls=calls)
    assert (calls.network, calls.backward) == (10, 10) and bool(torch.isfinite(x).all())
    op = Operator(y=Y, forward_fn=lambda v: v @ A_MAT.T, adjoint_fn=lambda r: r @ A_MAT)
    out = fewstep.sample(model, noise(16), schedule, "ddim", nfe=8, wrappers=[Projection(op)])
    torch.testing.assert_close(out @ A_MAT.T, Y.expand(16, 2))
    inpaint = Mask(y=torch.tensor([[0.0, 1.5, 0.0]], dtype=F64), mask=torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    dc = LangevinDC(inpaint, data_std=S)
    x = fewstep.sample(model, noise(64), schedule, dc.solver, nfe=39, guidance=dc.guidance,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert float((x[:, 1] - 1.5).abs().max()) < 1e-2


def test_shape_check_before_any_model_call() -> None:
    calls = fewstep.CallCount()
    schedule = fewstep.VP()
    wrong = Linear(y=Y, noise_std=NOISE, A=torch.ones(2, 5, dtype=F64))
    for kwargs in ({"guidance": PiGDM(wrong)}, {"guidance": DPS(wrong)}):
        with pytest.raises(ValueError, match="y: the"):
            fewstep.sample(mixture_model(GaussianMixture.single(D, M0, S), schedule), noise(4), schedule, "ddim",
                           nfe=4, calls=calls, **kwargs)  # fmt: skip
    assert calls.network == 0


def _bias_table(
    prior: GaussianMixture, meas: Linear, data_std: float, n: int = 20000
) -> dict[str, tuple[float, float]]:
    """Each method's (mean error, covariance error) in Frobenius norm against the exact posterior (VP, epsilon)."""
    post = mixture_posterior(prior, meas)
    schedule = fewstep.VP()
    model = mixture_model(prior, schedule)
    dim = prior.dim
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(11), dtype=F64)
    rules = {
        "dps(0.2)": DPS(meas, scale=0.2),
        "dps(normalized, 2.0)": DPS(meas, scale=2.0, normalized=True),
        "pigdm": PiGDM(meas, data_std=data_std),
        "pigdm(no jacobian)": PiGDM(meas, data_std=data_std, through_network=False),
    }
    out = {name: fewstep.sample(model, z, schedule, "dpmpp_2m", nfe=50, guidance=rule, progress=False)
           for name, rule in rules.items()}  # fmt: skip
    dc = LangevinDC(meas, data_std=data_std)
    out["langevin_dc(50 steps)"] = fewstep.sample(model, z, schedule, dc.solver, nfe=99, guidance=dc.guidance,
                                                  generator=torch.Generator().manual_seed(12), progress=False)  # fmt: skip
    out["red_diff(1000, lam=1)"] = red_diff(model, schedule, meas, z, steps=1000, lam=1.0,
                                            generator=torch.Generator().manual_seed(13))  # fmt: skip
    out["exact samples (noise floor)"] = post.sample(n, generator=torch.Generator().manual_seed(14))
    table = {}
    for name, x in out.items():
        m, c = x.mean(0), torch.cov(x.T).reshape(dim, dim)
        table[name] = (float((m - post.mean()).norm()), float(torch.linalg.matrix_norm(c - post.covariance())))
        print(f"{name:28s} mean error {table[name][0]:.3f}   covariance error {table[name][1]:.3f}")
    return table


@pytest.mark.slow
def test_measured_bias() -> None:
    """The measurement reported in docs/posterior.md: ``pytest -m slow -s tests/test_posterior_samplers.py``."""
    from fewstep.bench.targets import mixture_2d

    print("\nGaussian N(0.3, 1.2^2 I) in 3-D, y = A x + N(0, 0.3^2), A 2x3:")
    gauss = _bias_table(GaussianMixture.single(D, M0, S), Linear(y=Y, noise_std=NOISE, A=A_MAT), S)
    assert gauss["pigdm"][0] < 0.05 and gauss["pigdm"][1] < 0.05
    mix = mixture_2d()
    std = float(mix.covariance().diagonal().mean().sqrt())
    print(f"2-D mixture (9 components), y = x_1 + N(0, 0.3^2) = 1.2, data_std {std:.3f}:")
    _bias_table(mix, Linear(y=torch.tensor([[1.2]], dtype=F64), noise_std=0.3, A=torch.tensor([[1.0, 0.0]])), std)
    print("2-D mixture, y = (x_1 + x_2)/sqrt(2) + N(0, 0.1^2) = 0.5:")
    a = torch.tensor([[1.0, 1.0]], dtype=F64) / math.sqrt(2.0)
    _bias_table(mix, Linear(y=torch.tensor([[0.5]], dtype=F64), noise_std=0.1, A=a), std)
