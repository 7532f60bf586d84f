"""Noise for stochastic samplers: reproducible Brownian paths (:mod:`fewstep.noise.brownian`) and coloured noise
(:mod:`fewstep.noise.colored`)."""

from .brownian import BrownianPath, NoiseSampler, brownian_noise_sampler
from .colored import ColoredNoise, colored_noise_sampler

__all__ = ["BrownianPath", "ColoredNoise", "NoiseSampler", "brownian_noise_sampler", "colored_noise_sampler"]
