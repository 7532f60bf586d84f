"""Property tests (hypothesis) for the posterior samplers and the particle engine: over schedules x predictions x NFE,
every method returns a finite sample of the right shape and spends exactly its documented network calls and
backward passes (particles batched into one call per node)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_posterior_samplers import mixture_model

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.posterior import DPS, TDS, FKSteering, LangevinDC, Linear, Mask, PiGDM, Projection, smc
from fewstep.posterior.smc import driftlite, inpaint_smc, linear_smc

F64 = torch.float64
PRIOR = GaussianMixture([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]], 0.5)
A = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=F64)
Y = torch.tensor([[0.7, -1.1]], dtype=F64)
SCHEDULES = {  # a flow from just below pure noise: gradient guidance needs alpha > 0 at its first evaluation
    "vp": (fewstep.VP(), 1.0),
    "sd": (fewstep.DiscreteVP.scaled_linear(), None),
    "edm": (fewstep.EDM(), None),
    "flow": (fewstep.Flow(t_max=0.999), None),
}
METHODS = (
    "dps", "pigdm", "projection", "langevin_dc", "tds", "fk", "fk_gradient", "driftlite", "inpaint_smc", "linear_smc",
)  # fmt: skip
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def start(schedule: fewstep.NoiseSchedule, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64) * float(schedule.sigma(schedule.t_max))


@SETTINGS
@given(
    schedule_name=st.sampled_from(sorted(SCHEDULES)),
    prediction=st.sampled_from(["epsilon", "velocity"]),
    method=st.sampled_from(METHODS),
    nfe=st.integers(2, 20),
    seed=st.integers(0, 2**16),
)
def test_every_method_is_finite_and_spends_its_documented_calls(
    schedule_name: str, prediction: str, method: str, nfe: int, seed: int
) -> None:
    schedule, _ = SCHEDULES[schedule_name]
    # the test network takes the schedule time (a DiscreteVP's default network input is its DDPM index)
    network = mixture_model(PRIOR, schedule, prediction)

    def model(guidance: object = None) -> fewstep.Denoiser:
        return fewstep.Denoiser(network, schedule, prediction, time_input="t", guidance=guidance)  # type: ignore[arg-type]

    calls = fewstep.CallCount()
    noisy = Linear(y=Y, noise_std=0.3, A=A)
    if method == "driftlite":  # VCG: one backward pass through the network per stochastic step
        out = driftlite(model(), start(schedule, (3, 4, 3), seed), schedule, lambda x: -(x - 1.0).square().sum(1),
                        nfe=nfe, lam=0.5, generator=torch.Generator().manual_seed(seed), calls=calls)  # fmt: skip
        x = out.samples
        assert x.shape == (3, 4, 3) and bool(torch.isfinite(out.log_weights).all())
        assert calls.network == nfe and calls.backward == nfe - 1
    elif method == "inpaint_smc":  # noiseless for even seeds, noisy for odd ones
        mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
        inpaint = Mask(y=torch.tensor([[0.5, 0.0, -1.0]], dtype=F64), noise_std=0.2 * (seed % 2), mask=mask)
        out = inpaint_smc(model(), start(schedule, (3, 4, 3), seed), schedule, inpaint, nfe=nfe,
                          generator=torch.Generator().manual_seed(seed), calls=calls)  # fmt: skip
        x = out.samples
        assert x.shape == (3, 4, 3) and bool(torch.isfinite(out.log_weights).all())
        assert calls.network == nfe and calls.backward == 0
        if seed % 2 == 0:
            assert bool((x[..., [0, 2]] == inpaint.y[:, [0, 2]]).all())
    elif method == "linear_smc":  # noiseless for even seeds, noisy for odd ones
        linear = Linear(y=Y, noise_std=0.3 * (seed % 2), A=A)
        out = linear_smc(model(), start(schedule, (3, 4, 3), seed), schedule, linear, nfe=nfe,
                         generator=torch.Generator().manual_seed(seed), calls=calls)  # fmt: skip
        x = out.samples
        assert x.shape == (3, 4, 3) and bool(torch.isfinite(out.log_weights).all())
        assert calls.network == nfe and calls.backward == 0
        if seed % 2 == 0:
            assert float((x @ A.T - Y).abs().max()) < 1e-9
    elif method in ("tds", "fk", "fk_gradient"):
        reward = lambda x0: -(x0 - 1.0).square().sum(1)  # noqa: E731
        potential = TDS(noisy) if method == "tds" else FKSteering(reward, lam=0.5, gradient=method == "fk_gradient")
        out = smc(model(), start(schedule, (3, 4, 3), seed), schedule, potential, nfe=nfe,
                  generator=torch.Generator().manual_seed(seed), calls=calls)  # fmt: skip
        x = out.samples
        assert x.shape == (3, 4, 3) and bool(torch.isfinite(out.log_weights).all())
        assert calls.network == nfe and calls.backward == (nfe - 1 if method == "tds" else 0)
    else:
        noise = start(schedule, (6, 3), seed)
        kw: dict = {"calls": calls, "nfe": nfe}
        if method == "dps":
            x = fewstep.sample(model(DPS(noisy, 0.2)), noise, schedule, "dpmpp_2m", **kw)
            assert calls.backward == nfe
        elif method == "pigdm":
            x = fewstep.sample(model(PiGDM(noisy)), noise, schedule, "dpmpp_2m", **kw)
            assert calls.backward <= nfe
        elif method == "projection":
            mask = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
            y = torch.tensor([[0.5, 0.0, -1.0]], dtype=F64)
            x = fewstep.sample(model(), noise, schedule, "dpmpp_2m", wrappers=[Projection(Mask(y=y, mask=mask))],
                               final="zero", **kw)  # fmt: skip
            assert bool((x[:, [0, 2]] == y[:, [0, 2]]).all())
        else:
            dc = LangevinDC(noisy)
            n_steps = (nfe + 1) // 2  # pc_langevin: steps + (steps - 1) corrector evaluations
            kw["nfe"] = 2 * n_steps - 1
            x = fewstep.sample(model(dc.guidance), noise, schedule, dc.solver,
                               generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip
        assert calls.network == kw["nfe"]
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("bad", [0, -1])
def test_particles_below_one_are_refused(bad: int) -> None:
    schedule = fewstep.VP()
    with pytest.raises(ValueError, match="particles"):
        smc(mixture_model(PRIOR, schedule), start(schedule, (2, 3, 3), 0), schedule,
            FKSteering(lambda x0: x0.sum(1)), nfe=5, particles=bad)  # fmt: skip
