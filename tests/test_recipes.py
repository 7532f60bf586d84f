"""The plain-function recipes of docs/integrations.md give the same samples as the direct model."""

from __future__ import annotations

import torch

import fewstep
from fewstep.bench.targets import mixture_2d


def test_reversed_time_velocity_field_recipe() -> None:
    """A field running from noise at t = 0 to data at t = 1, reversed in time and sign, is fewstep's Flow model."""
    direct = mixture_2d().model(fewstep.Flow(), "velocity")

    def velocity_field(t, x):  # flow_matching / torchdiffeq convention
        return -direct(x, 1.0 - t)

    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = {"schedule": fewstep.Flow(), "solver": "dpmpp_2m", "nfe": 10, "spacing": "logsnr", "prediction": "velocity"}
    a = fewstep.sample(lambda x, t: -velocity_field(1.0 - t, x), noise, **kw)
    b = fewstep.sample(direct, noise, **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_time_scaled_model_recipe() -> None:
    """A model taking t * 1000 with time_input=lambda t: t * 1000 equals the model taking t."""
    direct = mixture_2d().model(fewstep.Flow(), "velocity")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = {"schedule": fewstep.Flow(), "solver": "heun", "nfe": 9, "spacing": "uniform", "prediction": "velocity"}
    a = fewstep.sample(lambda x, ts: direct(x, ts / 1000), noise, time_input=lambda t: t * 1000, **kw)
    b = fewstep.sample(direct, noise, **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
