"""A learned target: a small epsilon-prediction MLP trained in-process on a 2-D mixture.

The exact targets test solvers on the true denoiser; a trained network is smooth in a different way
(its errors are not those of any data distribution), so this target checks that conclusions carry over
to real models. It has no closed-form answer: its reference is a 1,000-step solve of the same network
with the singlestep third-order DPM-Solver-3 (:func:`learned_reference`; 3,000 evaluations, about 1e-7
from a 2,000-step solve for the default network, far below the error of any few-step run). A multistep
solver is a worse choice: its lower-order start-up steps make the global error second order (DPM-Solver++
(3M) with 1,000 steps was about 3e-5 off).

The network (:class:`EpsMLP`) is ``eps_hat(x_t, t)``: the input ``x_t`` concatenated with sinusoidal
features of the log noise level ``log(sigma_t / alpha_t)``, ``depth`` hidden SiLU layers of ``width``
units, a linear output. It is trained with the
usual denoising loss ``E |eps_hat(alpha_t x0 + sigma_t eps, t) - eps|^2`` on fresh exact samples ``x0`` of
:func:`mixture_2d`, ``t ~ U(t_min, t_max)`` of the linear :class:`~fewstep.VP` schedule, Adam with a
cosine learning-rate decay. Training is deterministic given the seed: all randomness comes from one
seeded ``torch.Generator`` (initialisation included) and it runs on one CPU thread.

Trained weights are cached in the user's cache directory (:func:`fewstep.cache.cache_dir`), keyed by a version string
and a hash of the :class:`TrainConfig`, so the network is trained once and loaded afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...cache import cache_dir, load_cached, save_atomic
from ...schedules import VP, NoiseSchedule
from .mixture import GaussianMixture, mixture_2d

__all__ = [
    "cache_dir",
    "TrainConfig",
    "EpsMLP",
    "LearnedTarget",
    "train_denoiser",
    "learned_target",
    "learned_reference",
]

CACHE_VERSION = "1"  # bump when training or the network change, so that stale weights are not loaded


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op thread (bit-reproducible CPU arithmetic), restoring the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained network (the cache key is a hash of these fields)."""

    data: str = "default"  # name of the 2-D mixture (:func:`mixture_2d`)
    width: int = 128
    depth: int = 3  # hidden layers
    time_features: int = 32  # sinusoidal features of t (half sines, half cosines)
    iterations: int = 12000
    batch: int = 512
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "depth", "iterations", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if isinstance(self.time_features, bool) or not isinstance(self.time_features, int):
            raise ValueError(f"time_features: must be a positive even integer, got {self.time_features!r}")
        if self.time_features < 2 or self.time_features % 2:
            raise ValueError(f"time_features: must be a positive even integer, got {self.time_features!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {self.seed!r}")
        mixture_2d(self.data)  # raises on an unknown name

    def key(self) -> str:
        """A short hash of the version and the fields: the cache file's name."""
        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class EpsMLP(nn.Module):
    """``eps_hat(x, t)``: ``[x, sin(f_j c), cos(f_j c)]`` -> ``depth`` x (Linear ``width``, SiLU) -> Linear.

    ``c = log(sigma(t) / alpha(t)) = -lambda(t)`` is the noise level of ``schedule`` at time ``t`` (about
    -4.6 to 5 for the default VP), and the frequencies ``f_j`` are geometric from 1/4 to 8, ``j < n =
    time_features / 2``. Conditioning on the log noise level with moderate frequencies keeps the network
    smooth along the sampling path (a DDPM embedding of ``1000 t`` oscillates with period ~0.006 in t,
    which a reference solve would have to resolve). ``x`` has shape (B, dim); ``t`` is a number or has B
    values. The network computes in its parameters' dtype and returns ``x``'s dtype.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        time_features: int = 32,
        schedule: NoiseSchedule | None = None,
    ):
        super().__init__()
        half = time_features // 2
        self.schedule = schedule or VP()
        self.register_buffer(
            "freqs", torch.logspace(math.log10(0.25), math.log10(8.0), half, dtype=torch.float64), persistent=False
        )
        layers: list[nn.Module] = []
        size = dim + 2 * half
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, dim))
        self.net = nn.Sequential(*layers)
        self.dim = dim
        self.freqs: Tensor

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        dtype = next(self.parameters()).dtype
        b = x.shape[0]
        tt = torch.as_tensor(t).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if tt.shape[0] not in (1, b):
            raise ValueError(f"t: need a number or {b} values, got {tt.shape[0]}")
        level = -self.schedule.lambda_(tt).to(device=x.device, dtype=dtype)  # log(sigma / alpha)
        angle = level.expand(b)[:, None] * self.freqs.to(dtype)[None]
        h = torch.cat([x.reshape(b, self.dim).to(dtype), torch.sin(angle), torch.cos(angle)], dim=1)
        return self.net(h).reshape(x.shape).to(x.dtype)


@dataclass(frozen=True)
class LearnedTarget:
    """A trained epsilon-prediction network with its schedule: ``fewstep.sample(t.model, noise, t.schedule)``.

    ``data`` is the mixture it was trained on (the distribution the network approximates, not its exact
    PF-ODE answer: that is :meth:`reference`). ``train_seconds`` and ``final_loss`` are those of the
    training run (also when the weights were loaded from ``path``; ``from_cache`` tells which).
    """

    model: EpsMLP
    schedule: NoiseSchedule
    data: GaussianMixture
    config: TrainConfig
    train_seconds: float
    final_loss: float
    from_cache: bool
    path: Path | None = None
    prediction: str = field(default="epsilon")

    @property
    def dim(self) -> int:
        return self.model.dim

    def reference(self, noise: Tensor, **options: Any) -> Tensor:
        """:func:`learned_reference` of this network from ``noise``."""
        return learned_reference(self, noise, **options)


def train_denoiser(
    config: TrainConfig, schedule: NoiseSchedule | None = None, *, callback: Callable[[int, float], None] | None = None
) -> tuple[EpsMLP, float, float]:
    """Train :class:`EpsMLP` as :class:`TrainConfig` says: returns (float32 network, seconds, final loss).

    Deterministic: the same config gives bit-identical weights (one seeded generator, one CPU thread).
    ``callback(iteration, loss)`` is called every 500 iterations. ``final_loss`` is the mean loss over the
    last 10% of the iterations.
    """
    schedule = schedule or VP()
    data = mixture_2d(config.data)
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))  # nn.Linear's init draws globally
        net = EpsMLP(data.dim, config.width, config.depth, config.time_features, schedule)
        t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)

        def batch(_: int) -> tuple[Tensor, Tensor, Tensor]:
            x0 = data.sample(config.batch, generator=gen)
            t = t_lo + (t_hi - t_lo) * torch.rand(config.batch, generator=gen, dtype=torch.float64)
            eps = torch.randn(config.batch, data.dim, generator=gen, dtype=torch.float64)
            xt = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
            return xt.float(), t, eps.float()

        final_loss = fit_eps(net, batch, config.iterations, config.lr, callback, every=500)
    net.eval().requires_grad_(False)
    return net, time.perf_counter() - start, final_loss


def fit_eps(
    net: nn.Module,
    batch: Callable[[int], tuple[Tensor, Tensor, Tensor]],
    iterations: int,
    lr: float,
    callback: Callable[[int, float], None] | None,
    every: int,
) -> float:
    """Fit a noise-prediction network with the denoising loss ``L = mean |eps_theta(x_t, t) - eps|^2`` on the
    batches ``batch(iteration) -> (x_t, t, eps)``: Adam at ``lr`` with a cosine decay to 0 over ``iterations``;
    ``callback(iteration, loss)`` every ``every`` iterations. Returns the mean loss over the last 10%."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / iterations)))
    tail, tail_n = 0.0, 0
    for it in range(iterations):
        xt, t, eps = batch(it)
        loss = torch.mean((net(xt, t) - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
        if it >= iterations - max(1, iterations // 10):
            tail, tail_n = tail + float(loss.detach()), tail_n + 1
        if callback is not None and (it + 1) % every == 0:
            callback(it + 1, float(loss.detach()))
    return tail / tail_n


def learned_target(
    config: TrainConfig | None = None,
    *,
    cache: bool = True,
    directory: str | Path | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: bool = False,
) -> LearnedTarget:
    """The learned target: trained once (about 30 s on one CPU core with the default config), then loaded.

    ``directory`` overrides :func:`cache_dir`; ``cache=False`` trains without reading or writing the cache.
    The returned network evaluates in ``dtype`` (float64 by default: the network is then a smooth float64
    function, so :func:`learned_reference` converges: 1,000 and 2,000 steps agree to about 1e-7), on the CPU.
    """
    config = config or TrainConfig()
    schedule = VP()
    path = (
        Path(directory if directory is not None else cache_dir())
        / f"learned-eps-mlp-v{CACHE_VERSION}-{config.key()}.pt"
    )
    blob = load_cached(path, CACHE_VERSION) if cache else None
    data = mixture_2d(config.data)
    with torch.random.fork_rng(devices=[]):  # the initialisation, overwritten, must not draw from the global RNG
        net = EpsMLP(data.dim, config.width, config.depth, config.time_features, schedule)
    if blob is not None:
        try:
            net.load_state_dict(blob["state_dict"])
        except (KeyError, RuntimeError):  # weights of another network under the same key: retrain
            blob = None
    if blob is not None:
        net.eval().requires_grad_(False)
        seconds, loss, from_cache = float(blob["train_seconds"]), float(blob["final_loss"]), True
    else:
        progress = (
            (lambda i, v: print(f"learned target: iteration {i}/{config.iterations}, loss {v:.4f}"))
            if verbose
            else None
        )
        net, seconds, loss = train_denoiser(config, schedule, callback=progress)
        from_cache = False
        if cache:
            state = {k: v.clone() for k, v in net.state_dict().items()}
            save_atomic(
                {
                    "version": CACHE_VERSION,
                    "config": asdict(config),
                    "state_dict": state,
                    "train_seconds": seconds,
                    "final_loss": loss,
                },
                path,
            )
    return LearnedTarget(net.to(dtype), schedule, data, config, seconds, loss, from_cache, path if cache else None)


def learned_reference(
    model: LearnedTarget | Callable[..., Tensor],
    noise: Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    prediction: str = "epsilon",
    solver: str = "dpm_solver_3",
    steps: int = 1000,
    spacing: str = "logsnr",
) -> Tensor:
    """The reference answer for a network without a closed form: a ``steps``-step solve with ``solver``.

    ``model`` is a :class:`LearnedTarget` (its schedule and prediction are used) or any model callable
    with its ``schedule``. With the defaults, DPM-Solver-3 (singlestep, third order: no lower-order
    start-up steps) with 1,000 logSNR-spaced steps (3,000 evaluations) from ``noise`` at ``t_max`` to the
    clean end (the last step maps the state at ``t_min`` to its data prediction, as every solver's final
    step to sigma = 0 does). Pass float64 noise for a float64 solve.
    """
    from ...sampling import sample

    fn: Callable[..., Tensor]
    if isinstance(model, LearnedTarget):
        schedule, prediction, fn = model.schedule, model.prediction, model.model
    else:
        if schedule is None:
            raise TypeError("schedule: required when model is not a LearnedTarget")
        fn = model
    return sample(fn, noise, schedule, solver, steps=steps, spacing=spacing, prediction=prediction, progress=False)
