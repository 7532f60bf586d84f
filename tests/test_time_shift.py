"""The Time-Shift Sampler option ``fewstep.sample(..., time_shift=...)`` (Li et al. 2024).

- Off by default (and with ``window=0``) the run is the solver's own.
- The selection rule: the network is called at the candidate time whose training variance
  ``alpha(c)^2 data_var + sigma(c)^2`` is nearest to the per-sample variance of the state, checked on states with
  a known noise level and on runs of a model with a systematic error (an epsilon model scaled by 0.9 / 1.1 leaves
  too much / too little noise in the state, so the shifted times lie above / below the grid's).
- Every solver (multistep, singlestep, stochastic) runs with it at the same NFE; bad options raise before any
  model call.
"""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.bench.targets import GaussianMixture
from fewstep.model import TimeShift

F64 = torch.float64
DIM = 512
STD = 0.5  # one isotropic Gaussian N(0, STD^2 I): a clean sample's element variance is ~STD^2
TARGET = GaussianMixture.single(DIM, 0.0, STD)


class Recording:
    """A model that records the schedule times it is called at (one row per call)."""

    def __init__(self, model, scale: float = 1.0):
        self.model, self.scale, self.times = model, scale, []

    def __call__(self, x, time):
        self.times.append(self.model.schedule_time(time).expand(x.shape[0]).clone())
        return self.model(x, time) * self.scale


def noise_of(schedule: fewstep.NoiseSchedule, batch: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, s = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    return a * TARGET.sample(batch, g) + s * torch.randn(batch, DIM, generator=g, dtype=F64)


def test_off_by_default_and_with_a_zero_window() -> None:
    sched = fewstep.VP()
    model, noise = TARGET.model(sched, "epsilon"), noise_of(sched)
    base = fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=8)
    assert torch.equal(fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=8, time_shift=None), base)
    zero = fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=8, time_shift=TimeShift(window=0.0))
    assert torch.equal(zero, base)
    single = fewstep.sample(model, noise, sched, "dpmpp_2m", nfe=8, time_shift={"window": 0.2, "points": 1})
    torch.testing.assert_close(single, base, rtol=0, atol=1e-12)  # the one candidate is t itself


@pytest.mark.parametrize("sched", [fewstep.VP(), fewstep.EDM()], ids=["vp", "edm"])
def test_selects_the_time_of_the_states_noise_level(sched: fewstep.NoiseSchedule) -> None:
    """A state built at time t' (exact samples plus noise of level t') and evaluated at the grid time t is
    evaluated at the candidate nearest in variance, which for 512 elements lies near t' (the median over the
    batch within 0.1 in log-SNR; one sample's variance has a relative spread of sqrt(2/512) ~ 6%)."""
    lam_t, window, points = 0.0, 0.4, 41
    t = float(sched.t_of_lambda(torch.tensor(lam_t, dtype=F64)))
    for offset in (-0.25, 0.0, 0.3):  # the state's log-SNR relative to t's
        t_true = float(sched.t_of_lambda(torch.tensor(lam_t + offset, dtype=F64)))
        g = torch.Generator().manual_seed(3)
        a, s = float(sched.alpha(t_true)), float(sched.sigma(t_true))
        x = a * TARGET.sample(8, g) + s * torch.randn(8, DIM, generator=g, dtype=F64)
        model = Recording(TARGET.model(sched, "sample"))
        shift = TimeShift(window=window, points=points, data_var=STD**2)
        fewstep.sample(model, x, sched, "ddim", spacing=[t], final="zero", prediction="sample", time_shift=shift)
        (picked,) = model.times
        lam_picked = sched.lambda_(picked)
        assert abs(float(lam_picked.median()) - (lam_t + offset)) <= 0.1, lam_picked
        # The chosen candidates are the nearest in variance among the window (checked against every candidate).
        lam_c = lam_t + torch.linspace(-window, window, points, dtype=F64)
        t_c = sched.t_of_lambda(lam_c)
        v_c = sched.alpha(t_c) ** 2 * STD**2 + sched.sigma(t_c) ** 2
        best = (x.var(dim=1, unbiased=False)[:, None] - v_c).abs().min(dim=1).values
        got = (x.var(dim=1, unbiased=False) - (sched.alpha(picked) ** 2 * STD**2 + sched.sigma(picked) ** 2)).abs()
        torch.testing.assert_close(got, best, rtol=0, atol=1e-6)  # the model reads its time back to ~1e-8


@pytest.mark.parametrize(("scale", "direction"), [(0.9, 1.0), (1.1, -1.0)])
@pytest.mark.parametrize(("solver", "nfe"), [("ddim", 10), ("dpmpp_2m", 10), ("dpmpp_2s", 9), ("euler_ancestral", 10)])
def test_a_biased_model_is_evaluated_where_the_states_noise_is(
    scale: float, direction: float, solver: str, nfe: int
) -> None:
    """An epsilon model scaled by 0.9 under-removes the noise: the states stay noisier than the grid's times, and
    the shifted evaluations after the first (at the exact start state) lie at higher noise; scaled by 1.1, lower."""
    sched = fewstep.VP()
    noise = noise_of(sched)
    shift = TimeShift(window=0.5, points=21, data_var=STD**2)
    plain = Recording(TARGET.model(sched, "epsilon"), scale)
    fewstep.sample(plain, noise, sched, solver, nfe=nfe, generator=torch.Generator().manual_seed(1))
    shifted = Recording(TARGET.model(sched, "epsilon"), scale)
    out = fewstep.sample(
        shifted, noise, sched, solver, nfe=nfe, time_shift=shift, generator=torch.Generator().manual_seed(1)
    )
    assert len(shifted.times) == len(plain.times) == nfe and bool(torch.isfinite(out).all())
    grid_t = torch.stack([t[0] for t in plain.times])  # each call's requested (grid) time
    picked = torch.stack(shifted.times)  # (calls, batch)
    dlam = sched.lambda_(picked[1:]) - sched.lambda_(grid_t[1:, None])  # > 0: less noise than the grid time
    assert float((-direction * dlam).mean()) > 0.02, dlam.mean(dim=1)


@pytest.mark.parametrize(
    ("solver", "nfe"),
    [("deis_3", 8), ("heun", 9), ("dpm_solver_3", 9), ("unipc_bh2", 8), ("dpmpp_3m_sde", 8), ("edm_sde", 9)],
)
def test_every_kind_of_solver_runs_with_it(solver: str, nfe: int) -> None:
    sched = fewstep.EDM()
    model = Recording(TARGET.model(sched, "sample"))
    noise = noise_of(sched, batch=4)
    shift = {"window": 0.3, "points": 7, "data_var": STD**2, "cutoff": 1.0}
    g = torch.Generator().manual_seed(0)
    out = fewstep.sample(model, noise, sched, solver, nfe=nfe, prediction="sample", time_shift=shift, generator=g)
    assert out.shape == noise.shape and bool(torch.isfinite(out).all())
    assert len(model.times) == nfe
    assert any(bool((t != t[0]).any()) or float(t[0]) >= 1.0 for t in model.times)
    for t in model.times:  # below the cutoff every sample is evaluated at the requested time
        if float(t.min()) < 1.0:
            assert bool((t == t[0]).all())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "velocity", "score"])
def test_predictions_and_thresholding(prediction: str) -> None:
    sched = fewstep.DiscreteVP.scaled_linear()
    model = TARGET.model(sched, prediction)
    noise = noise_of(sched, batch=4)
    for threshold in (None, fewstep.Threshold(ratio=0.99, max_value=2.0)):
        out = fewstep.sample(
            model, noise, sched, "dpmpp_2m", nfe=6, prediction=prediction, threshold=threshold,
            time_shift=TimeShift(window=0.2, data_var=STD**2),
        )  # fmt: skip
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"window": -0.1}, ValueError, "time_shift.window"),
        ({"window": math.nan}, ValueError, "time_shift.window"),
        ({"points": 0}, ValueError, "time_shift.points"),
        ({"points": 2.5}, ValueError, "time_shift.points"),
        ({"cutoff": math.nan}, ValueError, "time_shift.cutoff"),
        ({"data_var": -1.0}, ValueError, "time_shift.data_var"),
        ({"size": 3}, TypeError, "time_shift: unknown option"),
        (0.1, TypeError, "time_shift: must be None"),
    ],
)
def test_invalid_options_raise_before_any_model_call(value: object, error: type, match: str) -> None:
    sched = fewstep.VP()
    model = Recording(TARGET.model(sched, "epsilon"))
    with pytest.raises(error, match=match):
        fewstep.sample(model, noise_of(sched, batch=2), sched, "ddim", nfe=4, time_shift=value)  # type: ignore[arg-type]
    assert model.times == []
