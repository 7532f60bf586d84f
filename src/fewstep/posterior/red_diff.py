"""RED-diff (Mardani, Song, Kautz & Vahdat 2023, "A Variational Perspective on Solving Inverse Problems with
Diffusion Models"): variational inference with ``q(x0 | y) = N(mu, 0)``, optimised over a descending schedule of
times ``t`` with Adam on the loss

    L(mu) = |y - A(mu)|^2 / (2 s^2) + lambda_t sg[eps_hat(x_t, t) - eps]^T mu,   x_t = alpha_t mu + sigma_t eps,

``eps ~ N(0, I)`` drawn afresh at each step, ``sg`` a stop-gradient (no backward pass through the network: one
forward call per step, counted in ``CallCount.network``), and ``lambda_t = lam * sigma_t / alpha_t`` (the paper's
inverse-SNR weighting). The second term is the score-matching regulariser of the diffusion prior (RED, regularisation
by denoising); its gradient is the score mismatch at ``x_t``. The result is the optimised ``mu``: a point estimate
(mode seeking), not a posterior sample; its spread over seeds comes from the initialisation and the drawn noise,
not from the posterior's.

The times are the interior ``steps`` times of ``model_times(schedule, steps + 2, spacing)`` (both ends dropped:
``lambda_t`` is infinite at ``alpha = 0`` and the score undefined at ``sigma = 0``). Any measurement with a
likelihood serves (linear or not, through autograd on ``A``); a noiseless one has no likelihood and is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..guidance.loss_steps import check_count
from ..guidance.rule_checks import finite_number
from ..model.calls import CallCount
from ..model.denoiser import Denoiser
from ..schedules.base import NoiseSchedule
from ..spacing import SpacingLike, model_times
from .checks import check_fit, require_measurement
from .measurement import Measurement


def red_diff(
    model: Callable[..., Tensor] | Denoiser,
    schedule: NoiseSchedule,
    measurement: Measurement,
    init: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    lam: float = 0.25,
    prediction: str = "epsilon",
    spacing: SpacingLike = "uniform",
    betas: tuple[float, float] = (0.9, 0.99),
    generator: torch.Generator | None = None,
    calls: CallCount | None = None,
) -> Tensor:
    """RED-diff from ``init`` (the starting ``mu``, e.g. ``A^+ y`` or noise, one row per sample): ``steps``
    Adam steps of learning rate ``lr`` and ``betas`` on the loss of the module docstring with weight ``lam``;
    ``model`` predicts ``prediction`` (or is a :class:`~fewstep.model.Denoiser`); ``generator`` draws the noise;
    ``calls`` receives the network calls (``steps`` of them). Returns the optimised ``mu``."""
    require_measurement(measurement)
    if not isinstance(init, Tensor) or not init.is_floating_point():
        raise TypeError(f"init: must be a floating-point tensor of states, got {type(init).__name__}")
    check_count("steps", steps, 1)
    if finite_number("lr", lr) <= 0:
        raise ValueError(f"lr: must be > 0 (Adam's learning rate, e.g. 0.1), got {lr}")
    if finite_number("lam", lam) < 0:
        raise ValueError(f"lam: must be >= 0 (the prior's weight, e.g. 0.25), got {lam}")
    if measurement.noiseless:
        raise ValueError(
            "measurement: RED-diff's data term |y - A mu|^2 / (2 s^2) needs noise_std > 0; give the measurement a "
            "small noise level (e.g. 1e-3) for a nearly noiseless problem"
        )
    check_fit(measurement, init)
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model, schedule, prediction)
    calls = CallCount() if calls is None else calls
    stack = denoiser.stack(calls, True)
    times = model_times(schedule, steps + 2, spacing)[1:-1].tolist()
    points = denoiser.points(times, init.shape[0], init.device, init.dtype)
    mu = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=betas)
    s2 = measurement.noise_std**2
    for p in points:
        eps = torch.randn(init.shape, generator=generator, dtype=init.dtype, device=init.device)
        with torch.no_grad():
            _, eps_hat = stack.evaluate(p.alpha * mu.detach() + p.sigma * eps, p)
        assert eps_hat is not None
        weight = lam * p.sigma / p.alpha
        with torch.enable_grad():
            fit = measurement.residual(mu).flatten(1).square().sum() / (2.0 * s2)
            loss = fit + weight * ((eps_hat - eps).detach() * mu).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    stack.finish()
    return mu.detach()
