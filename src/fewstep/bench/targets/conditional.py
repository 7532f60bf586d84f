"""Class-conditional exact targets: a Gaussian mixture whose components carry class labels.

With an integer label ``c_k`` per component of ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``, the class-conditional data
distribution is the mixture of the components of class ``y`` with their weights renormalised,

    p(x0 | y) = sum_{k: c_k = y} w_k N(mu_k, s_k^2 I) / sum_{k: c_k = y} w_k,

so the conditional denoiser is exact as well (:meth:`GaussianMixture.denoise` of that sub-mixture), and the null
label ``-1`` stands for the unconditional mixture, as a classifier-free-guidance network's dropped label does.

Classifier-free guidance (Ho & Salimans 2022) at scale ``w`` turns the two predictions into

    eps_w = eps_u + w (eps_c - eps_u),     x0_w = x0_u + w (x0_c - x0_u),

(the same combination on either, since ``x0 = (x - sigma eps) / alpha`` is affine in eps with a coefficient of ``x``
that the combination keeps), and :class:`GuidedMixture` is the exact target whose denoiser is that pair: the
reference solution of its probability-flow ODE (:func:`~fewstep.bench.targets.reference_solution`) is the exact
answer of a CFG-guided deterministic sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from ...schedules import NoiseSchedule
from .digits import digits_target
from .mixture import GaussianMixture, MixtureModel, mixture_2d
from .presets import mixture_nd

__all__ = [
    "NULL_LABEL",
    "GuidedMixture",
    "LabelledMixture",
    "LabelledMixtureModel",
    "cfg_combine",
    "labelled_digits",
    "labelled_mixture_2d",
    "labelled_mixture_nd",
]

#: The label of the unconditional branch (a CFG network's dropped label).
NULL_LABEL = -1

T = TypeVar("T", Tensor, float)


def cfg_combine(uncond: T, cond: T, scale: float) -> T:
    """Classifier-free guidance's combination ``u + w (c - u)`` (Ho & Salimans 2022, eq. 6)."""
    return uncond + scale * (cond - uncond)


def _labels_of(y: Tensor | int, batch: int, num_classes: int) -> Tensor:
    """``y`` as a (batch,) int64 CPU tensor of labels in ``-1 .. num_classes - 1``; a ValueError otherwise."""
    if isinstance(y, bool) or not isinstance(y, int | Tensor):
        raise TypeError(f"y: need a LongTensor of shape ({batch},) or an int label, got {type(y).__name__}")
    labels = torch.as_tensor(y).detach().cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"y: need integer labels (a LongTensor), got {labels.dtype}")
    labels = labels.to(torch.int64).reshape(-1)
    if labels.shape[0] == 1:
        labels = labels.expand(batch)
    if labels.shape[0] != batch:
        raise ValueError(f"y: need one label per sample ({batch}), got {labels.shape[0]}")
    if bool(torch.any((labels < NULL_LABEL) | (labels >= num_classes))):
        raise ValueError(
            f"y: labels must lie in -1 .. {num_classes - 1} (-1: the unconditional model), got "
            f"{sorted({int(v) for v in labels.unique()})}"
        )
    return labels


def _rows(value: Tensor | float, rows: Tensor, batch: int) -> Tensor | float:
    """The rows ``rows`` of a per-sample value (a number or a tensor with 1 or ``batch`` leading entries)."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch and batch > 1:
        return value[rows.to(value.device)]
    return value


def _by_label(
    x: Tensor, labels: Tensor, parts: Callable[[int, Tensor], tuple[Tensor, ...]], count: int
) -> tuple[Tensor, ...]:
    """``count`` tensors shaped like ``x`` whose rows of label ``l`` are ``parts(l, rows)`` (rows: a boolean mask)."""
    outs: list[Tensor] | None = None
    for label in labels.unique().tolist():
        rows = labels == label
        values = parts(int(label), rows)
        if outs is None:
            outs = [torch.empty(x.shape, dtype=v.dtype, device=v.device) for v in values]
        for out, v in zip(outs, values, strict=True):
            out[rows.to(out.device)] = v
    assert outs is not None and len(outs) == count
    return tuple(outs)


class LabelledMixture:
    """A :class:`GaussianMixture` with an integer class label per component (``labels``, shape (K,), values
    ``0 .. C - 1``, every class present): the class-conditional exact target of the module docstring."""

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int] | np.ndarray | Tensor):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: need a GaussianMixture, got {type(mixture).__name__}")
        lab = torch.as_tensor(np.asarray(labels)).reshape(-1)
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise TypeError(f"labels: need integers, got {lab.dtype}")
        lab = lab.to(torch.int64)
        if lab.shape[0] != mixture.num_components:
            raise ValueError(f"labels: need one per component ({mixture.num_components}), got {lab.shape[0]}")
        if bool(torch.any(lab < 0)):
            raise ValueError("labels: must be >= 0 (-1 is the null label of the unconditional model)")
        missing = sorted(set(range(int(lab.max()) + 1)) - set(lab.tolist()))
        if missing:
            raise ValueError(f"labels: classes 0 .. {int(lab.max())} must each label a component; missing {missing}")
        self.mixture, self.labels = mixture, lab
        self._classes: dict[int, GaussianMixture] = {}

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def dim(self) -> int:
        return self.mixture.dim

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self.mixture.image_shape

    def class_weights(self) -> Tensor:
        """``P(y) = sum_{k: c_k = y} w_k``, shape (C,)."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.mixture.weights)

    def condition(self, y: int) -> GaussianMixture:
        """``p(x0 | y)``: the components of class ``y`` with their weights renormalised; ``-1`` the full mixture."""
        if isinstance(y, bool) or not isinstance(y, int | np.integer):
            raise TypeError(f"y: need an int label, got {type(y).__name__}")
        y = int(y)
        if y == NULL_LABEL:
            return self.mixture
        if not 0 <= y < self.num_classes:
            raise ValueError(f"y: choose a class in 0 .. {self.num_classes - 1}, or -1 for the unconditional mixture")
        if y not in self._classes:
            m, k = self.mixture, self.labels == y
            self._classes[y] = GaussianMixture(m.means[k], m.stds[k], m.weights[k], image_shape=m.image_shape)
        return self._classes[y]

    def denoise(
        self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor, y: Tensor | int
    ) -> tuple[Tensor, Tensor]:
        """The exact ``(E[x0 | x_t, y], E[eps | x_t, y])`` per sample (``y`` one label per sample, -1: none);
        ``alpha``, ``sigma`` as for :meth:`GaussianMixture.denoise`."""
        x = torch.as_tensor(x)
        b = x.shape[0]
        labels = _labels_of(y, b, self.num_classes)

        def part(label: int, rows: Tensor) -> tuple[Tensor, ...]:
            r = rows.to(x.device)
            return self.condition(label).denoise(x[r], _rows(alpha, rows, b), _rows(sigma, rows, b))

        x0, eps = _by_label(x, labels, part, 2)
        return x0, eps

    def sample(self, y: Tensor | Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """One exact sample of ``p(x0 | y_i)`` per label (``-1``: of the full mixture), shape (len(y), D)."""
        labels = _labels_of(torch.as_tensor(y), len(y), self.num_classes)
        out = torch.empty(labels.shape[0], self.dim, dtype=torch.float64)
        for label in labels.unique().tolist():
            rows = labels == label
            out[rows] = self.condition(int(label)).sample(int(rows.sum()), generator)
        return out

    def model(
        self,
        schedule: NoiseSchedule,
        prediction: str = "epsilon",
        dtype: torch.dtype | None = None,
        *,
        time_input: str | None = None,
    ) -> LabelledMixtureModel:
        """The exact class-conditional network ``model(x, time, y)``: per sample, the prediction of
        :meth:`GaussianMixture.model` for ``condition(y_i)`` (the full mixture for ``y_i = -1``), with the same
        ``prediction``, ``time_input`` and ``dtype`` conventions."""
        models = {
            label: self.condition(label).model(schedule, prediction, dtype, time_input=time_input)
            for label in range(NULL_LABEL, self.num_classes)
        }
        return LabelledMixtureModel(self, models)

    def guided(self, y: Tensor | Sequence[int], scale: float) -> GuidedMixture:
        """The exact CFG-guided target for the labels ``y`` (one per sample) at guidance ``scale``."""
        return GuidedMixture(self, torch.as_tensor(y), scale)

    def __repr__(self) -> str:
        return f"LabelledMixture({self.mixture!r}, num_classes={self.num_classes})"


@dataclass(frozen=True)
class LabelledMixtureModel:
    """A :class:`LabelledMixture`'s exact denoiser acting as a class-conditional network ``model(x, time, y)``."""

    target: LabelledMixture
    models: dict[int, MixtureModel] = field(repr=False)

    def __call__(self, x: Tensor, time: Tensor | float, y: Tensor | int) -> Tensor:
        b = x.shape[0]
        labels = _labels_of(y, b, self.target.num_classes)
        t = torch.as_tensor(time)
        if t.ndim > 0 and t.numel() not in (1, b):
            raise ValueError(f"time: need a scalar or {b} values, got {t.numel()}")
        t = t.reshape(-1) if t.ndim > 0 else t

        def part(label: int, rows: Tensor) -> tuple[Tensor, ...]:
            return (self.models[label](x[rows.to(x.device)], _rows(t, rows, b)),)

        (out,) = _by_label(x, labels, part, 1)
        return out


@dataclass(frozen=True)
class GuidedMixture:
    """The exact target of classifier-free guidance at ``scale`` with the labels ``y`` (one per sample): its
    :meth:`denoise` is ``x0_u + w (x0_c - x0_u)``, ``eps_u + w (eps_c - eps_u)`` (module docstring), so
    :func:`~fewstep.bench.targets.reference_solution` of it is the guided probability-flow ODE's solution."""

    labelled: LabelledMixture
    y: Tensor
    scale: float

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not math.isfinite(self.scale):
            raise ValueError(f"scale: must be a finite number, got {self.scale!r}")
        _labels_of(self.y, self.y.numel(), self.labelled.num_classes)

    @property
    def dim(self) -> int:
        return self.labelled.dim

    def denoise(self, x: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> tuple[Tensor, Tensor]:
        x0_u, eps_u = self.labelled.mixture.denoise(x, alpha, sigma)
        x0_c, eps_c = self.labelled.denoise(x, alpha, sigma, self.y)
        return cfg_combine(x0_u, x0_c, self.scale), cfg_combine(eps_u, eps_c, self.scale)


def _sector_labels(means: Tensor, sectors: int) -> np.ndarray:
    """The angle sector (of ``sectors`` equal ones from angle 0, counter-clockwise) of each 2-D mean."""
    angle = np.mod(np.arctan2(means[:, 1].numpy(), means[:, 0].numpy()), 2.0 * np.pi)
    return np.minimum((angle / (2.0 * np.pi / sectors)).astype(np.int64), sectors - 1)


def labelled_mixture_2d(name: str = "default", sectors: int = 4) -> LabelledMixture:
    """The 2-D mixture ``mixture_2d(name)`` with each component labelled by the angle sector of its mean (``sectors``
    equal sectors counter-clockwise from the positive x axis; a mean at the origin has angle 0). Default: the 8 ring
    components two per quadrant, the centre component in class 0 with those at 0 and 45 degrees."""
    if isinstance(sectors, bool) or not isinstance(sectors, int) or sectors < 1:
        raise ValueError(f"sectors: must be a positive integer, got {sectors!r}")
    mixture = mixture_2d(name)
    labels = _sector_labels(mixture.means, sectors)
    used = np.unique(labels)
    if len(used) != sectors:
        raise ValueError(
            f"sectors: {sectors} sectors leave some of mixture_2d({name!r}) empty; choose at most {len(used)}"
        )
    return LabelledMixture(mixture, labels)


def labelled_mixture_nd(dim: int = 64, components: int = 200, classes: int = 10, seed: int = 0) -> LabelledMixture:
    """``mixture_nd(dim, components, seed)`` with component ``k`` in class ``k mod classes`` (its means are
    independent draws, so this is a random balanced labelling)."""
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= components:
        raise ValueError(f"classes: must be an integer in 1 .. components ({components}), got {classes!r}")
    return LabelledMixture(mixture_nd(dim, components, seed), np.arange(components) % classes)


def labelled_digits(std: float = 0.05, scale: str = "[-1,1]") -> LabelledMixture:
    """:func:`~fewstep.bench.targets.digits_target` with each image's component labelled by its digit (0-9, the
    ``target`` of ``sklearn.datasets.load_digits``, in the same order as the components)."""
    from sklearn.datasets import load_digits

    mixture = digits_target(std, scale)
    return LabelledMixture(mixture, np.asarray(load_digits().target, dtype=np.int64))
