"""Exact inversion: BDIA, EDICT-style coupling and edit-friendly DDPM noise round-trip to rounding error."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep
from fewstep.bench.targets import labelled_mixture_2d, mixture_2d
from fewstep.inversion import (
    BDIALatent,
    CoupledState,
    EditFriendlyNoise,
    bdia_invert,
    bdia_sample,
    edict_invert,
    edict_sample,
    edit_friendly_invert,
    edit_friendly_sample,
)

VP = fewstep.VP()


def data(n: int = 32, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return mixture_2d().sample(n, torch.Generator().manual_seed(0)).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def times(n: int) -> list[float]:
    return fewstep.spacing.model_times(VP, n + 1).tolist()


def eps_of(model, x: torch.Tensor, t: float) -> torch.Tensor:
    """The exact mixture's epsilon prediction, called directly (time input "t")."""
    return model(x, torch.full((x.shape[0],), t, dtype=torch.float64))


def ab(t: float) -> tuple[float, float]:
    tt = torch.tensor(t, dtype=torch.float64)
    return float(VP.alpha(tt)), float(VP.sigma(tt))


@pytest.mark.parametrize("nfe", [10, 20])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_bdia_round_trip_exact(nfe: int, gamma: float) -> None:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    inv, run = fewstep.CallCount(), fewstep.CallCount()
    latent = bdia_invert(model, x0, VP, nfe, gamma=gamma, calls=inv)
    x = bdia_sample(model, latent, VP, nfe, gamma=gamma, calls=run)
    assert rel(x, x0) <= 1e-10
    assert (inv.network, run.network) == (nfe, nfe - 1)  # one network call per step


def test_bdia_round_trip_float32_and_flow() -> None:
    model = mixture_2d().model(VP, "epsilon")
    x0 = data(dtype=torch.float32)
    assert rel(bdia_sample(model, bdia_invert(model, x0, VP, 10), VP, 10), x0) <= 1e-5
    flow = fewstep.Flow()
    vel, x0 = mixture_2d().model(flow, "velocity"), data()
    assert rel(bdia_sample(vel, bdia_invert(vel, x0, flow, 10), flow, 10), x0) <= 1e-10


def test_bdia_steps_match_hand_formula() -> None:
    """nfe = 2 from a given pair: x_2 = gamma x_0 - gamma Phi(x_1 -> t_0) + Phi(x_1 -> t_2); from noise the first
    step is DDIM."""
    model, gamma = mixture_2d().model(VP, "epsilon"), 0.7
    g = torch.Generator().manual_seed(3)
    xa, xb = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = times(2)
    (a0, s0), (a1, s1), (a2, s2) = (ab(u) for u in t)

    def phi(x: torch.Tensor, tk: float, ak: float, sk: float, aj: float, sj: float) -> torch.Tensor:
        e = eps_of(model, x, tk)
        return aj * (x - sk * e) / ak + sj * e

    expected = gamma * xa - gamma * phi(xb, t[1], a1, s1, a0, s0) + phi(xb, t[1], a1, s1, a2, s2)
    got = bdia_sample(model, BDIALatent(xa, xb), VP, 2, gamma=gamma)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    first = phi(xa, t[0], a0, s0, a1, s1)
    expected = gamma * xa - gamma * phi(first, t[1], a1, s1, a0, s0) + phi(first, t[1], a1, s1, a2, s2)
    torch.testing.assert_close(bdia_sample(model, xa, VP, 2, gamma=gamma), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nfe", [10, 20])
def test_edict_round_trip_exact(nfe: int) -> None:
    model, x0 = mixture_2d().model(VP, "epsilon"), data()
    inv, run = fewstep.CallCount(), fewstep.CallCount()
    latent = edict_invert(model, x0, VP, nfe, calls=inv)
    out = edict_sample(model, latent, VP, nfe, calls=run)
    assert rel(out.x, x0) <= 1e-10 and rel(out.y, x0) <= 1e-10
    assert (inv.network, run.network) == (2 * nfe, 2 * nfe)


def test_edict_step_matches_hand_formula() -> None:
    model, p = mixture_2d().model(VP, "epsilon"), 0.9
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = times(1)
    (a0, s0), (a1, s1) = ab(t[0]), ab(t[1])
    a = a1 / a0
    b = s1 - a * s0
    xi = a * noise + b * eps_of(model, noise, t[0])
    yi = a * noise + b * eps_of(model, xi, t[0])
    x = p * xi + (1 - p) * yi
    y = p * yi + (1 - p) * x
    got = edict_sample(model, noise, VP, 1, p=p)
    torch.testing.assert_close(got.x, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.y, y, rtol=1e-12, atol=1e-12)


def test_edit_friendly_reproduces_and_edits() -> None:
    target = labelled_mixture_2d()
    model = target.model(VP, "epsilon")
    labels = torch.zeros(64, dtype=torch.long)
    x0 = target.sample(labels, torch.Generator().manual_seed(0))
    inv, run = fewstep.CallCount(), fewstep.CallCount()
    kwargs = {"y": labels}
    latent = edit_friendly_invert(model, x0, VP, 20, model_kwargs=kwargs, generator=torch.Generator().manual_seed(1))
    assert latent.noises.shape == (20, 64, 2)
    again = edit_friendly_sample(model, latent, VP, 20, model_kwargs=kwargs, calls=run)
    assert rel(again, x0) <= 1e-12
    latent = edit_friendly_invert(model, x0, VP, 20, model_kwargs=kwargs, calls=inv)
    assert (inv.network, run.network) == (20, 20)
    # under label 2 (the sector of angles [pi, 3 pi / 2)) the same noises give samples of that class
    edit = edit_friendly_sample(model, latent, VP, 20, model_kwargs={"y": torch.full_like(labels, 2)})
    angle = torch.remainder(torch.atan2(edit[:, 1], edit[:, 0]), 2 * math.pi)
    inside = (angle > math.pi - 0.3) & (angle < 1.5 * math.pi + 0.3)
    assert float(inside.double().mean()) >= 0.9


def test_edit_friendly_noise_is_the_ddpm_step() -> None:
    """One step by hand: z = (x0 - alpha_1 x0_hat - sqrt(sigma_1^2 - s^2) eps_hat) / s at x_T drawn from q."""
    model, x0 = mixture_2d().model(VP, "epsilon"), data(8)
    t = times(1)
    (a0, s0), (a1, s1) = ab(t[0]), ab(t[1])
    latent = edit_friendly_invert(model, x0, VP, 1, generator=torch.Generator().manual_seed(5))
    draw = torch.randn((1, 8, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)[0]
    torch.testing.assert_close(latent.x, a0 * x0 + s0 * draw, rtol=1e-14, atol=1e-14)
    e = eps_of(model, latent.x, t[0])
    pred = (latent.x - s0 * e) / a0
    lam0, lam1 = math.log(a0 / s0), math.log(a1 / s1)
    s = s1 * math.sqrt(1 - math.exp(-2 * (lam1 - lam0)))
    z = (x0 - a1 * pred - math.sqrt(s1**2 - s**2) * e) / s
    torch.testing.assert_close(latent.noises[0], z, rtol=1e-10, atol=1e-10)


def failing_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the model must not be called before the options are checked")


@pytest.mark.parametrize("gamma", [0.0, -1.0, 1.5])
def test_bad_gamma(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        bdia_invert(failing_model, data(), VP, 5, gamma=gamma)
    with pytest.raises(TypeError, match="gamma"):
        bdia_sample(failing_model, data(), VP, 5, gamma=True)


@pytest.mark.parametrize("p", [0.0, 1.2])
def test_bad_p_and_eta(p: float) -> None:
    with pytest.raises(ValueError, match="p: must be in"):
        edict_sample(failing_model, data(), VP, 5, p=p)
    with pytest.raises(ValueError, match="eta"):
        edit_friendly_invert(failing_model, data(), VP, 5, eta=p)


def test_shape_and_nfe_errors() -> None:
    x = data()
    with pytest.raises(ValueError, match="same shape"):
        bdia_sample(failing_model, BDIALatent(x, x[:4]), VP, 5)
    with pytest.raises(ValueError, match="same shape"):
        edict_invert(failing_model, CoupledState(x, x.float()), VP, 5)
    with pytest.raises(ValueError, match="nfe"):
        bdia_invert(failing_model, x, VP, 0)
    with pytest.raises(ValueError, match="latent.noises"):
        edit_friendly_sample(failing_model, EditFriendlyNoise(x, torch.zeros(4, *x.shape)), VP, 5)
    with pytest.raises(TypeError, match="latent"):
        edit_friendly_sample(failing_model, x, VP, 5)  # type: ignore[arg-type]
    flow = fewstep.Flow()
    with pytest.raises(ValueError, match="alpha"):
        edict_invert(failing_model, x, flow, 5, prediction="velocity")


def test_bdia_round_trip_under_cfg() -> None:
    """A Denoiser carrying classifier-free guidance (7.5): one batched call per step, two branches."""
    target = labelled_mixture_2d()
    labels = torch.arange(32) % target.num_classes
    model = fewstep.Denoiser(
        target.model(VP, "epsilon"),
        VP,
        "epsilon",
        model_kwargs={"y": labels},
        guidance_scale=7.5,
        uncond_kwargs={"y": torch.full_like(labels, -1)},
    )
    x0 = target.sample(labels, torch.Generator().manual_seed(0))
    calls = fewstep.CallCount()
    x = bdia_sample(model, bdia_invert(model, x0, calls=calls, nfe=10), nfe=10, calls=calls)
    assert rel(x, x0) <= 1e-10
    assert (calls.network, calls.branches) == (19, 38)
