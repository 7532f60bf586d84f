"""Noise for stochastic samplers: reproducible Brownian paths (:mod:`fewstep.noise.brownian`)."""

from .brownian import BrownianPath, NoiseSampler, brownian_noise_sampler

__all__ = ["BrownianPath", "NoiseSampler", "brownian_noise_sampler"]
