"""Hard data consistency for noiseless linear measurements: each clean-sample prediction is projected onto the
affine set ``{x : A x = y}`` along the range of ``A^T``,

    x0_hat <- x0_hat + A^+ (y - A x0_hat),       A^+ = A^T (A A^T)^{-1},

the range-null-space decomposition of DDNM (Wang, Yu & Zhang 2023, "Zero-Shot Image Restoration Using Denoising
Diffusion Null-Space Model", ICLR): the range part of the prediction is taken from the measurement, its null-space
part from the network. For a :class:`Mask` this is replacement of the observed entries (the "replacement" /
repaint-style data consistency of score-based inpainting, Song et al. 2021, "Score-based generative modeling through
SDEs", App. I), done by selection so that those entries equal ``y`` bit for bit. ``eps_hat`` is moved with it so that
``x = alpha x0_hat + sigma_t eps_hat`` holds: every solver takes the projected field, and a run whose last step
lands on its last ``x0_hat`` (``final="zero"``, the default) ends on the set; :meth:`Projection.project` projects
any state (e.g. the output of a run that ends at ``t_min``).

No likelihood is involved and no network derivative (no backward pass). The prior's part is the unguided one: for
a prior whose observed and unobserved coordinates are independent (``N(m, S^2 I)`` under a mask) the unobserved
coordinates keep their prior law, which is then the exact posterior's; for correlated data the null-space part does
not see the measurement except through the state, and the samples are biased.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.calls import CallCount
from ..model.point import Point
from ..model.stack import Evaluation, Prediction
from .checks import checked, require_measurement
from .linalg import pseudo_inverse, require_linear
from .measurement import Mask, Measurement


@dataclass(frozen=True)
class Projection:
    """Hard data consistency on a noiseless linear ``measurement`` (module docstring); an evaluation layer:
    ``sample(..., wrappers=[Projection(measurement)])``."""

    measurement: Measurement

    def __post_init__(self) -> None:
        require_linear("measurement", require_measurement(self.measurement))
        if not self.measurement.noiseless:
            raise ValueError(
                f"measurement: Projection enforces A x = y exactly, for a noiseless measurement (noise_std=0), got "
                f"noise_std={self.measurement.noise_std}; for a noisy one use PiGDM or DPS"
            )

    def project(self, x: Tensor) -> Tensor:
        """``x + A^+ (y - A x)`` (for a mask: ``y`` on the observed entries, exactly)."""
        m = self.measurement
        if isinstance(m, Mask):
            return torch.where(m.mask.to(device=x.device).bool(), m.y.to(x).expand_as(x), x)
        return x + pseudo_inverse(m, m.residual(x), x)

    def wrap(self, inner: Evaluation, needs_eps: bool, calls: CallCount) -> Evaluation:
        def evaluate(x: Tensor, p: Point) -> Prediction:
            x0, eps = inner(x, p)
            moved = self.project(x0)
            if eps is None or p.alpha == 0.0 or p.sigma == 0.0:
                return moved, eps
            return moved, eps - (p.alpha / p.sigma) * (moved - x0)

        return checked(self.measurement, evaluate)
