"""k-diffusion / ComfyUI integration: k-diffusion-signature samplers and the wrap() adaptor."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.bench.targets import mixture_2d
from fewstep.integrations import kdiffusion as fk

K = pytest.importorskip("k_diffusion")
# conjugate_ddim's B_t = lam I is defined in the schedule's own time, so on k-diffusion's grid (EDM, time = sigma) it
# is another integrator than on DiscreteVP: the two runs are not the same method
TIME_DEPENDENT = {"conjugate_ddim"}
DETERMINISTIC = [i.name for i in fewstep.solvers.available() if not i.stochastic and i.name not in TIME_DEPENDENT]
SINGLESTEP_INTERMEDIATE = {"dpm_solver_2", "dpm_solver_3", "dpmpp_2s"}  # evaluate between grid times


@pytest.fixture(scope="module")
def target():
    return mixture_2d("default")


def test_every_solver_has_a_sampler() -> None:
    for name in [i.name for i in fewstep.solvers.available()]:
        f = getattr(fk, f"sample_{name}")
        assert f.__name__ == f"sample_{name}" and fk.SAMPLERS[name] is f
    with pytest.raises(AttributeError):
        fk.sample_no_such_solver  # noqa: B018


@pytest.mark.parametrize(
    ("ours", "theirs"), [("euler", "sample_euler"), ("heun", "sample_heun"), ("dpmpp_2m", "sample_dpmpp_2m")]
)
def test_same_as_k_diffusion_samplers(target, ours: str, theirs: str) -> None:
    """The same k-diffusion denoiser and sigmas through k-diffusion's sampler and fewstep's: equal in float64."""
    den = target.model(fewstep.EDM(), "sample")  # D(x, sigma)
    sigmas = K.sampling.get_sigmas_karras(12, 0.002, 80.0, rho=7.0).double()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    expected = getattr(K.sampling, theirs)(den, x, sigmas, disable=True)
    got = getattr(fk, f"sample_{ours}")(den, x, sigmas, disable=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", DETERMINISTIC)
@pytest.mark.parametrize("steps", [4, 10])
def test_discrete_eps_ddpm_denoiser_equals_fewstep_sample(target, solver: str, steps: int) -> None:
    """k-diffusion's DiscreteEpsDDPMDenoiser around an epsilon model, sampled with fewstep's k-diffusion-signature
    sampler, equals fewstep.sample on the model's own DiscreteVP schedule (state x = alpha * x_kdiffusion)."""
    vp = fewstep.DiscreteVP.linear()
    eps_model = target.model(vp, "epsilon")  # called with the (fractional) DDPM index
    kd_model = K.external.DiscreteEpsDDPMDenoiser(eps_model, torch.from_numpy(vp.alphas_cumprod), quantize=False)
    sigmas = kd_model.get_sigmas(steps).double()  # steps - 1 divides 999: integer timesteps
    idx = kd_model.sigma_to_t(sigmas[:-1])
    torch.testing.assert_close(idx, idx.round(), rtol=0, atol=1e-6)
    x_hat = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]
    got = fk.make_sampler(solver)(kd_model, x_hat, sigmas)  # fewstep's own solver (not the reference's variant)

    times = vp.t_of_index(idx.round())
    alpha0 = float(vp.alpha(times[0]))
    expected = fewstep.sample(eps_model, x_hat * alpha0, vp, solver, spacing=times)
    if solver in SINGLESTEP_INTERMEDIATE:
        # Their intermediate evaluations fall between training timesteps, where k-diffusion's DiscreteSchedule
        # interpolates log sigma in the index and fewstep's DiscreteVP log alpha in t: the model sees slightly
        # different times, so the samples agree only closely.
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def test_callback_and_extra_args(target) -> None:
    calls: list[dict] = []

    def den(x, sigma, shift=0.0):
        return target.model(fewstep.EDM(), "sample")(x, sigma) + shift

    sigmas = K.sampling.get_sigmas_karras(5, 0.002, 80.0).double()
    x = torch.randn(4, 2, dtype=torch.float64) * 80.0
    a = fk.sample_dpmpp_3m(den, x, sigmas, extra_args={"shift": 0.5}, callback=calls.append)
    b = fk.sample_dpmpp_3m(den, x, sigmas)
    assert [c["i"] for c in calls] == list(range(5))
    assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(calls[0])
    assert calls[0]["sigma"] == pytest.approx(80.0)
    assert not torch.allclose(a, b)


def test_sigmas_without_final_zero_stop_at_the_last_sigma(target) -> None:
    den = target.model(fewstep.EDM(), "sample")
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64) * 80.0
    out = fk.sample_euler(den, x, sigmas)
    ref = K.sampling.sample_euler(den, x, sigmas, disable=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_bad_sigmas() -> None:
    with pytest.raises(ValueError, match="sigmas"):
        fk.sample_euler(lambda x, s: x, torch.zeros(2, 2), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("schedule", "prediction"), [(fewstep.DiscreteVP.linear(), "epsilon"), (fewstep.VP(), "v_prediction")]
)
def test_wrap_runs_k_diffusion_samplers_on_fewstep_models(target, schedule, prediction) -> None:
    """k-diffusion's own sampler on wrap(Denoiser) equals fewstep.sample with the same solver and grid."""
    model = target.model(schedule, prediction)
    kd_model = fk.wrap(fewstep.Denoiser(model, schedule, prediction))
    sigmas = kd_model.get_sigmas(8)
    times = fewstep.spacing.model_times(schedule, 8, "karras")
    torch.testing.assert_close(sigmas[:-1], torch.exp(-schedule.lambda_(times)))
    x_hat = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0]
    got = K.sampling.sample_dpmpp_2m(kd_model, x_hat, sigmas, disable=True)
    expected = fewstep.sample(
        model, x_hat * float(schedule.alpha(times[0])), schedule, "dpmpp_2m", spacing=times, prediction=prediction
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert kd_model.calls.nfe == 8


@pytest.mark.parametrize(
    ("ours", "theirs"), [("euler_ancestral", "sample_euler_ancestral"), ("dpmpp_2m_sde", "sample_dpmpp_2m_sde")]
)
def test_stochastic_samplers_take_k_diffusion_noise_samplers(target, ours: str, theirs: str) -> None:
    """With the same noise sampler, fewstep's stochastic samplers through the k-diffusion signature equal k-diffusion's."""
    den = target.model(fewstep.EDM(), "sample")
    sigmas = K.sampling.get_sigmas_karras(10, 0.002, 80.0, rho=7.0, device="cpu").double()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 80.0

    def noise_sampler(sigma, sigma_next):  # a deterministic function of the step
        seed = int(1e6 * float(sigma)) % (2**31)
        return torch.randn(16, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    expected = getattr(K.sampling, theirs)(den, x, sigmas, disable=True, noise_sampler=noise_sampler)
    got = getattr(fk, f"sample_{ours}")(den, x, sigmas, noise_sampler=noise_sampler)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
