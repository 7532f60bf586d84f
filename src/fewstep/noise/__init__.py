"""Noise for stochastic samplers: per-sample seeded streams (:mod:`fewstep.noise.streams`), reproducible Brownian
paths (:mod:`fewstep.noise.brownian`) and coloured noise (:mod:`fewstep.noise.colored`)."""

from .brownian import BrownianPath, NoiseSampler, brownian_noise_sampler
from .colored import ColoredNoise, colored_noise_sampler
from .streams import SeededNoise

__all__ = [
    "BrownianPath",
    "ColoredNoise",
    "NoiseSampler",
    "SeededNoise",
    "brownian_noise_sampler",
    "colored_noise_sampler",
]
