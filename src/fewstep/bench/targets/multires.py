"""An exact image target at several resolutions: a mixture of images and its area-averaged copies.

Resolution-changing samplers (:class:`~fewstep.reducers.Bottleneck`) need a model that accepts images of several
sizes and means the same data at each: a network pre-trained at lower resolutions. For a mixture of isotropic
Gaussians this exists in closed form. If ``x0 ~ sum_n w_n N(m_n, s_n^2 I)`` holds images (C, H, W), its
``k x k`` area average ``P_k x0`` (the mean of each block of ``k x k`` pixels) is again such a mixture,

    P_k x0 ~ sum_n w_n N(P_k m_n, (s_n / k)^2 I),

since each output pixel averages ``k^2`` independent normals of variance ``s_n^2``. :class:`MultiResolutionMixture`
answers a model call at ``(B, C, H/k, W/k)`` with the exact denoiser of that mixture (:class:`GaussianMixture`):
every resolution is exact, and the low-resolution calls are cheaper (the work is linear in the pixels).
:func:`digits_multires` is the digits of scikit-learn, bilinearly enlarged to ``size x size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor
from torch.nn import functional

from ...schedules import NoiseSchedule
from .digits import digits_target
from .mixture import GaussianMixture, MixtureModel


@dataclass
class MultiResolutionMixture:
    """``mixture`` (its ``image_shape`` (H, W) or (C, H, W)) and its area averages by the ``factors`` dividing H, W.

    :meth:`at` is the mixture at one factor; :meth:`model` the exact network ``model(x, time)`` for every factor
    (chosen by ``x``'s last two sizes).
    """

    mixture: GaussianMixture
    _levels: dict[int, GaussianMixture] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        shape = self.mixture.image_shape
        if shape is None or len(shape) not in (2, 3):
            raise ValueError(f"mixture: needs an image_shape (H, W) or (C, H, W), got {shape!r}")
        self._levels[1] = self.mixture

    @property
    def shape(self) -> tuple[int, int, int]:
        """The full-resolution image shape (C, H, W)."""
        shape = self.mixture.image_shape
        assert shape is not None
        return (1, *shape) if len(shape) == 2 else (shape[0], shape[1], shape[2])

    def at(self, factor: int) -> GaussianMixture:
        """The mixture of the ``factor x factor`` area averages (means averaged, standard deviations / factor)."""
        c, h, w = self.shape
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or h % factor or w % factor:
            raise ValueError(f"factor: must be a positive integer dividing the image size {h} x {w}, got {factor!r}")
        if factor not in self._levels:
            means = self.mixture.means.reshape(-1, c, h, w)
            pooled = functional.avg_pool2d(means, factor).reshape(means.shape[0], -1)
            shape = (c, h // factor, w // factor)
            self._levels[factor] = GaussianMixture(
                pooled, self.mixture.stds / factor, self.mixture.weights, image_shape=shape
            )
        return self._levels[factor]

    def model(self, schedule: NoiseSchedule, prediction: str = "epsilon") -> MultiResolutionModel:
        """The exact denoiser at every resolution as a network predicting ``prediction`` under ``schedule``."""
        self.mixture.model(schedule, prediction)  # checks the prediction type
        return MultiResolutionModel(self, schedule, prediction)


@dataclass
class MultiResolutionModel:
    """``model(x, time)`` for ``x`` of shape (B, C, H/k, W/k): the exact output of the mixture at factor ``k``."""

    target: MultiResolutionMixture
    schedule: NoiseSchedule
    prediction: str
    _models: dict[int, MixtureModel] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, x: Tensor, time: Tensor | float) -> Tensor:
        c, h, w = self.target.shape
        if x.ndim != 4 or x.shape[1] != c or h % x.shape[2] or w % x.shape[3] or h // x.shape[2] != w // x.shape[3]:
            raise ValueError(
                f"x: need images (B, {c}, {h}/k, {w}/k) for an integer k dividing both sizes, got {tuple(x.shape)}"
            )
        factor = h // x.shape[2]
        if factor not in self._models:
            self._models[factor] = self.target.at(factor).model(self.schedule, self.prediction)
        return self._models[factor](x, time)


def digits_multires(size: int = 16, std: float = 0.05) -> MultiResolutionMixture:
    """The 1,797 digits of scikit-learn (pixels in [-1, 1]), bilinearly enlarged from 8 x 8 to ``size x size``
    (a multiple of 8), as a mixture of ``N(d_n, std^2 I)`` at every resolution (module docstring)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size: must be a multiple of 8 (e.g. 16), got {size!r}")
    base = digits_target(std)
    images = base.means.reshape(-1, 1, 8, 8)
    if size != 8:
        images = functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mixture = GaussianMixture(images.reshape(images.shape[0], -1), float(std), image_shape=(1, size, size))
    return MultiResolutionMixture(mixture)


__all__ = ["MultiResolutionMixture", "MultiResolutionModel", "digits_multires"]
