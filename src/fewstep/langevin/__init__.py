"""Sampling unnormalised densities with Langevin and kinetic-Langevin samplers (docs/langevin.md).

A :class:`Target` (a log-density or a score), batched chains ``x0`` of shape ``[chains, d]``, and a sampler by
name: ``fewstep.langevin.sample(target, "mala", x0, draws=1000, warmup=500)`` returns :class:`Chains`.
The sampler modules register themselves in :data:`SAMPLERS` when imported here.
"""

from . import (
    kinetic,  # noqa: F401  (registers kinetic, baoab, obabo, randomized_midpoint)
    mala,  # noqa: F401  (registers mala)
    ula,  # noqa: F401  (registers ula)
)
from .chains import Chains, ChainsDiagnostics
from .registry import SAMPLERS, register, sample
from .target import Target

__all__ = ["SAMPLERS", "Chains", "ChainsDiagnostics", "Target", "register", "sample"]

from . import (  # noqa: E402  (register annealed_langevin, walk_jump, sgld, structured_sgmcmc, aldi, myula)
    annealed,  # noqa: F401
    ensemble,  # noqa: F401
    proximal,  # noqa: F401
    sgld,  # noqa: F401
    structured,  # noqa: F401
    walk_jump,  # noqa: F401
)
from .diffusion import DiffusionTarget  # noqa: E402
from .minibatch import MinibatchTarget  # noqa: E402
from .proximal import L1, Box  # noqa: E402

__all__ += ["Box", "DiffusionTarget", "L1", "MinibatchTarget"]

from . import (  # noqa: E402  (register multiscale_annealed, dropout_sgmcmc, mirror_langevin)
    averaging,  # noqa: F401
    dropout,  # noqa: F401
    mirror,  # noqa: F401
)
from .mirror import EntropicL1  # noqa: E402

__all__ += ["EntropicL1"]
