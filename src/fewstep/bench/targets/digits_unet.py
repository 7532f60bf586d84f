"""A learned image target: a tiny convolutional UNet trained in-process on the 8 x 8 digits of scikit-learn.

The learned MLP (:mod:`.learned`) checks that conclusions drawn on exact targets carry over to a trained
network in two dimensions; this target does the same for a small image model, the kind of network fast
samplers are used with: convolutions, GroupNorm, SiLU, a skip connection across two resolutions and a
time embedding. It predicts the noise, ``eps_hat(x_t, t)``, on the linear :class:`~fewstep.VP` schedule.

Data: the 1,797 images of ``sklearn.datasets.load_digits`` (shipped with scikit-learn, no download), pixels
``0..16`` mapped to ``[-1, 1]`` by ``x / 8 - 1`` as in :func:`~fewstep.bench.targets.digits_target`.

Training minimises the denoising loss (Ho et al. 2020, eq. 14, with the continuous time of Song et al. 2021)::

    L = E_{x0, t, eps} |eps_hat(alpha_t x0 + sigma_t eps, t) - eps|^2,   t ~ U(t_min, t_max),  eps ~ N(0, I)

over minibatches drawn with replacement from the data set, with Adam and a cosine learning-rate decay.
All randomness comes from one seeded ``torch.Generator`` (initialisation included), and training runs on one
CPU thread, so a config gives bit-identical weights on every run. (A second thread speeds the small
convolutions up by only about 20%, changes the rounding of the weight gradients, and slows training down
many times over when other processes compete for the cores.)

Afterwards the network evaluates in float64 (a smooth float64 function of ``x`` and ``t``), so that the
reference, a tight DPM-Solver-3 solve of the same network (:func:`~fewstep.bench.targets.learned_reference`),
converges. The weights are cached in :func:`fewstep.cache.cache_dir`, keyed by a version string and a hash of
the :class:`DigitsUNetConfig`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...cache import cache_dir, load_cached, save_atomic
from ...schedules import VP, NoiseSchedule
from .digits import digits_target
from .learned import fit_eps, learned_reference, single_thread
from .mixture import GaussianMixture

__all__ = [
    "DigitsUNetConfig",
    "DigitsUNet",
    "DigitsUNetTarget",
    "train_digits_unet",
    "digits_unet_target",
    "digits_images",
]

CACHE_VERSION = "1"  # bump when training or the network change, so that stale weights are not loaded

#: The default reference: DPM-Solver-3 steps from ``t_max`` to the clean end (3 evaluations each). For the default
#: network 200 and 400 steps agree to about 6e-6 (pixels within +-1.25; ``benchmarks/digits_unet.py``).
REFERENCE_STEPS = 200

IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DigitsUNetConfig:
    """Everything that determines the trained UNet (the cache key is a hash of these fields).

    ``channels`` is the width at 8 x 8 (twice that at 4 x 4), ``groups`` the GroupNorm groups (dividing
    ``channels``), ``time_features`` the sinusoidal features of the noise level (even).
    """

    channels: int = 16
    groups: int = 4
    time_features: int = 16
    embedding: int = 64
    iterations: int = 4000
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("channels", "groups", "time_features", "embedding", "iterations", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.channels % self.groups:
            raise ValueError(f"groups: must divide channels ({self.channels}), got {self.groups}")
        if self.time_features % 2:
            raise ValueError(f"time_features: must be a positive even integer, got {self.time_features!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {self.seed!r}")

    def key(self) -> str:
        """A short hash of the version and the fields: the cache file's name."""
        text = json.dumps({"version": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResBlock(nn.Module):
    """``skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))) + W e))))``: a residual block with the time embedding ``e``
    added between its two 3 x 3 convolutions (the DDPM UNet's block, Ho et al. 2020, without dropout)."""

    def __init__(self, c_in: int, c_out: int, embedding: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(embedding, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """``eps_hat(x, t)`` for 1 x 8 x 8 images: a two-resolution UNet with a noise-level embedding.

    Layout (``c = channels``)::

        x (1, 8, 8) -> conv 3x3 -> ResBlock(c) --------------------------------- skip ---+
                                      -> conv 3x3 stride 2 (2c, 4 x 4) -> ResBlock(2c)   |
                                      -> nearest x2 -> conv 3x3 (c, 8 x 8) -> concat <---+
                                      -> ResBlock(2c -> c) -> GN, SiLU -> conv 3x3 -> (1, 8, 8)

    The embedding ``e`` is an MLP (Linear, SiLU, Linear) of ``[sin(f_j l), cos(f_j l)]``, ``l = log(sigma_t /
    alpha_t) = -lambda(t)`` the log noise level of ``schedule`` and ``f_j`` geometric from 1/4 to 8 (as in
    :class:`~fewstep.bench.targets.learned.EpsMLP`: smooth along the sampling path). ``x`` has shape (B, 64),
    (B, 8, 8) or (B, 1, 8, 8) and the output has ``x``'s shape and dtype; ``t`` is a number or has B values.
    The network computes in its parameters' dtype.
    """

    def __init__(
        self,
        channels: int = 16,
        groups: int = 4,
        time_features: int = 16,
        embedding: int = 64,
        schedule: NoiseSchedule | None = None,
    ):
        super().__init__()
        c = channels
        self.schedule = schedule or VP()
        self.register_buffer(
            "freqs",
            torch.logspace(math.log10(0.25), math.log10(8.0), time_features // 2, dtype=torch.float64),
            persistent=False,
        )
        self.freqs: Tensor
        self.embed = nn.Sequential(nn.Linear(time_features, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.down = ResBlock(c, c, embedding, groups)
        self.downsample = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * c, 2 * c, embedding, groups)
        self.upsample = nn.Conv2d(2 * c, c, 3, padding=1)
        self.up = ResBlock(2 * c, c, embedding, groups)
        self.norm_out = nn.GroupNorm(groups, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)
        self.dim = 64

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        dtype = self.conv_in.weight.dtype
        b = x.shape[0]
        if x[0].numel() != self.dim:
            raise ValueError(f"x: need 64 values per sample (8 x 8 images), got shape {tuple(x.shape)}")
        tt = torch.as_tensor(t, dtype=torch.float64).detach().to(device="cpu").reshape(-1)  # a float stays exact
        if tt.shape[0] not in (1, b):
            raise ValueError(f"t: need a number or {b} values, got {tt.shape[0]}")
        level = -self.schedule.lambda_(tt).to(device=x.device, dtype=dtype)  # log(sigma / alpha)
        angle = level.expand(b)[:, None] * self.freqs.to(dtype)[None]
        e = self.embed(torch.cat([torch.sin(angle), torch.cos(angle)], dim=1))
        h = self.conv_in(x.reshape(b, *IMAGE_SHAPE).to(dtype))
        skip = self.down(h, e)  # 8 x 8
        h = self.mid(self.downsample(skip), e)  # 4 x 4
        h = self.upsample(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))  # back to 8 x 8
        h = self.up(torch.cat([h, skip], dim=1), e)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return out.reshape(x.shape).to(x.dtype)


def digits_images() -> Tensor:
    """The 1,797 digits as a float64 tensor (1797, 64), pixels mapped to [-1, 1] by ``x / 8 - 1``."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(np.asarray(load_digits().data, dtype=np.float64) / 8.0 - 1.0)


@dataclass(frozen=True)
class DigitsUNetTarget:
    """The trained UNet with its schedule: ``fewstep.sample(t.model, noise, t.schedule)``, samples (B, 64).

    ``data`` is :func:`~fewstep.bench.targets.digits_target` (the data set the network was trained on, as a
    mixture of narrow Gaussians; exact samples for distribution metrics), not the network's own PF-ODE
    answer: that is :meth:`reference`. ``train_seconds`` and ``final_loss`` are those of the training run
    (also when the weights were loaded from ``path``; ``from_cache`` tells which).
    """

    model: DigitsUNet
    schedule: NoiseSchedule
    data: GaussianMixture
    config: DigitsUNetConfig
    train_seconds: float
    final_loss: float
    from_cache: bool
    path: Path | None = None
    prediction: str = field(default="epsilon")
    reference_steps: int = REFERENCE_STEPS

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def image_shape(self) -> tuple[int, int]:
        return (8, 8)

    def reference(self, noise: Tensor, **options: Any) -> Tensor:
        """:func:`~fewstep.bench.targets.learned_reference` of this network from ``noise`` (at ``t_max``):
        ``reference_steps`` DPM-Solver-3 steps on logSNR spacing unless ``options`` say otherwise."""
        options.setdefault("steps", self.reference_steps)
        return learned_reference(self.model, noise, self.schedule, prediction=self.prediction, **options)


def train_digits_unet(
    config: DigitsUNetConfig,
    schedule: NoiseSchedule | None = None,
    *,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[DigitsUNet, float, float]:
    """Train :class:`DigitsUNet` as ``config`` says: returns (float32 network, seconds, final loss).

    Deterministic: one seeded generator, one CPU thread; the global RNG (used by the layers' initialisation) is
    seeded from the generator inside a fork that leaves the caller's state alone.
    ``callback(iteration, loss)`` is called every 250 iterations; ``final_loss`` is the mean loss over the
    last 10% of the iterations.
    """
    schedule = schedule or VP()
    images = digits_images().float()
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))  # the layers' init draws globally
        net = DigitsUNet(config.channels, config.groups, config.time_features, config.embedding, schedule)
        t_lo, t_hi = float(schedule.t_min), float(schedule.t_max)

        def batch(_: int) -> tuple[Tensor, Tensor, Tensor]:
            x0 = images[torch.randint(images.shape[0], (config.batch,), generator=gen)]
            t = t_lo + (t_hi - t_lo) * torch.rand(config.batch, generator=gen, dtype=torch.float64)
            eps = torch.randn(config.batch, images.shape[1], generator=gen)
            alpha, sigma = schedule.alpha(t).float()[:, None], schedule.sigma(t).float()[:, None]
            return alpha * x0 + sigma * eps, t, eps  # x_t = alpha_t x0 + sigma_t eps

        final_loss = fit_eps(net, batch, config.iterations, config.lr, callback, every=250)
    net.eval().requires_grad_(False)
    return net, time.perf_counter() - start, final_loss


def digits_unet_target(
    config: DigitsUNetConfig | None = None,
    *,
    cache: bool = True,
    directory: str | Path | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: bool = False,
) -> DigitsUNetTarget:
    """The digits UNet target: trained once (about 2 minutes of one CPU core with the default config), then loaded.

    ``directory`` overrides :func:`~fewstep.cache.cache_dir`; ``cache=False`` trains without reading or writing
    the cache. The returned network evaluates in ``dtype`` (float64 by default, so that the reference solve
    converges), on the CPU.
    """
    config = config or DigitsUNetConfig()
    if not isinstance(config, DigitsUNetConfig):
        raise TypeError(f"config: need a DigitsUNetConfig or None, got {type(config).__name__}")
    schedule = VP()
    path = Path(directory if directory is not None else cache_dir()) / f"digits-unet-v{CACHE_VERSION}-{config.key()}.pt"
    blob = load_cached(path, CACHE_VERSION) if cache else None
    with torch.random.fork_rng(devices=[]):  # the initialisation, overwritten, must not draw from the global RNG
        net = DigitsUNet(config.channels, config.groups, config.time_features, config.embedding, schedule)
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
            (lambda i, v: print(f"digits UNet: iteration {i}/{config.iterations}, loss {v:.4f}")) if verbose else None
        )
        net, seconds, loss = train_digits_unet(config, schedule, callback=progress)
        from_cache = False
        if cache:
            state = {k: v.clone() for k, v in net.state_dict().items()}
            blob = {"version": CACHE_VERSION, "config": asdict(config), "state_dict": state}
            save_atomic({**blob, "train_seconds": seconds, "final_loss": loss}, path)
    return DigitsUNetTarget(
        net.to(dtype), schedule, digits_target(), config, seconds, loss, from_cache, path if cache else None
    )
