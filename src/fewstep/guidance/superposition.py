"""Superposition of diffusion models: the mixture (OR) and the equal-density set (AND) of M models, and their fixed
weighted sum (Skreta et al. 2025, "The Superposition of Diffusion Models Using the Itô Density Estimator", SuperDiff).

The M models share a schedule and a prediction type; each is the run's network under a conditioning (batched into one
call, :class:`~fewstep.guidance.Branches`) or a separate network (one call each). At every evaluation the rule forms

    x0_hat = sum_i kappa_i x0_i,    eps_hat = sum_i kappa_i eps_i,     sum_i kappa_i = 1   (per sample),

so the solver integrates the reverse SDE of the drift ``sum_i kappa_i u_i`` (``u_i`` model i's reverse-SDE drift).
The weights ``kappa`` come from each model's log-density ``log q_i(x_t)`` at the current state, tracked along the run
by the Itô density estimator (:mod:`fewstep.guidance.ito_density`):

- ``"or"``: the mixture ``sum_i pi_i q_i`` (``priors`` pi, equal by default). Its score is
  ``sum_i kappa_i grad log q_i`` with ``kappa_i = softmax_i(log q_i(x_t) + log pi_i)``, and the reverse SDE with
  that score samples the mixture at every t, so the samples follow it exactly up to the estimator's and the
  solver's discretisation.
- ``"and"``: ``kappa`` keeps the models' log-densities equal along the path (the paper's linear equation for
  kappa). Along ``dx = sum_j kappa_j u_j dtau + g dW_bar`` the drift of ``log q_i`` per step is
  ``c (<eps_bar, eps_i> - |eps_i|^2/2)`` plus a part common to all models, with ``eps_bar = sum_j kappa_j eps_j`` and
  ``c = e^{2h} - 1`` for a log-SNR step ``h`` (the estimator's scaling, :mod:`~fewstep.guidance.ito_density`). The
  paper solves ``d log q_i = d log q_j`` including the step's noise, drawn before the step; here the noise is drawn
  by the solver after the evaluation, so ``kappa`` instead solves, per sample,

      feedback log q_i + c (sum_j G_ij kappa_j - G_ii / 2) = mu   for every i,      sum_j kappa_j = 1,

  with the Gram matrix ``G_ij = <eps_i, eps_j>`` and ``mu`` free: the expected step closes the fraction ``feedback``
  of the models' log-density gaps (``feedback = 1``: all of it), and the noise of the last step is corrected at the
  next one. ``c`` uses the previous step's size (the rule does not know the next one); with two models
  ``kappa_1 = 1/2 - feedback (log q_1 - log q_2) / (c |eps_1 - eps_2|^2)``. Where the models nearly agree but
  their estimated densities do not, that solution is huge; it is projected onto ``bounds`` (each weight in
  ``[lo, hi]``, default ``[0, 1]``: convex combinations of the models).
- ``"sum"``: fixed ``weights`` (summing to 1; negative ones extrapolate), no density tracking: the reference.

OR and AND need the run to be a reverse-SDE path (one evaluation per step, full noise):
:meth:`Superposition.check_solver` refuses other solvers before any model call (``fewstep.sample`` asks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from ..model.network import Network
from ..model.point import Point
from ..model.stack import Evaluation, Prediction, convert
from .ito_density import ITO_SOLVERS, ItoDensity, accumulation_dtype, flat
from .rule_checks import finite_number
from .terms import Source, TermOutputs

MODES: tuple[str, ...] = ("or", "and", "sum")
#: A model of a superposition: the run's network under a conditioning (a mapping of the keys it replaces; None: its
#: own conditioning), a separate network ``model(x, time, **model_kwargs)``, or a
#: :class:`~fewstep.guidance.terms.Source`.
ModelLike = Mapping[str, Any] | Callable[..., Tensor] | Source | None
#: Tikhonov term on the Gram matrix of AND's system, relative to its mean diagonal (models that agree make it singular).
RIDGE = 1e-8
#: AND's weights by default: convex combinations of the models (the unbounded solution can be huge where the models
#: nearly agree but the estimated densities do not).
DEFAULT_BOUNDS = (0.0, 1.0)


class SuperpositionStep(NamedTuple):
    """One evaluation of a superposition: its schedule time ``t``, the models' log-densities ``log_q`` (B, M; up to a
    term common to all models; None for ``"sum"``) and the weights ``kappa`` (B, M) it combined them with."""

    t: float
    log_q: Tensor | None
    kappa: Tensor


@dataclass(frozen=True)
class Superposition:
    """SuperDiff's superposition of ``models`` (at least two; see :data:`ModelLike`) in ``mode``:

    - ``"or"``: their mixture, weighted by ``priors`` (equal by default);
    - ``"and"``: equal densities, closing the fraction ``feedback`` in [0, 2) of the log-density gaps per step, each
      weight within ``bounds`` (default (0, 1));
    - ``"sum"``: fixed ``weights`` summing to 1 (equal by default), with any solver.

    ``record``: a list to which every evaluation appends a :class:`SuperpositionStep`. The equations: the module
    docstring."""

    models: Sequence[ModelLike]
    mode: Literal["or", "and", "sum"] = "or"
    priors: Sequence[float] | None = None
    weights: Sequence[float] | None = None
    feedback: float = 1.0
    bounds: tuple[float, float] | None = None
    record: list[SuperpositionStep] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(_sources(self.models)))
        if self.mode not in MODES:
            hint = f" (did you mean {str(self.mode).lower()!r}?)" if str(self.mode).lower() in MODES else ""
            raise ValueError(f"mode: choose one of {', '.join(map(repr, MODES))}, got {self.mode!r}{hint}")
        m = len(self.models)
        if self.priors is not None:
            if self.mode != "or":
                raise ValueError(f"priors: only for mode='or' (the mixture's weights); mode={self.mode!r} takes none")
            _numbers("priors", self.priors, m)
            if any(float(v) <= 0 for v in self.priors):
                raise ValueError(f"priors: must be > 0 (the mixture's weights, normalised), got {list(self.priors)}")
        if self.weights is not None:
            if self.mode != "sum":
                raise ValueError(
                    f"weights: only for mode='sum' (fixed weights); mode={self.mode!r} sets its weights from the "
                    "models' densities (priors= for 'or')"
                )
            w = _numbers("weights", self.weights, m)
            if abs(sum(w) - 1.0) > 1e-9 * max(1.0, sum(abs(v) for v in w)):
                raise ValueError(
                    f"weights: must sum to 1 so that x = alpha x0_hat + sigma eps_hat holds, got {list(w)} (sum "
                    f"{sum(w):.6g}); e.g. {[v / sum(w) for v in w] if sum(w) else [1.0 / m] * m}"
                )
        fb = finite_number("feedback", self.feedback)
        if not 0.0 <= fb < 2.0:
            raise ValueError(
                f"feedback: must be in [0, 2) (the fraction of the log-density gap closed per step; 1 closes it), "
                f"got {self.feedback}"
            )
        if self.bounds is not None:
            if self.mode != "and":
                raise ValueError(
                    f"bounds: only for mode='and' (the range of its weights); mode={self.mode!r} takes none"
                )
            _check_bounds(self.bounds, m)
        if self.record is not None and not isinstance(self.record, list):
            raise TypeError(
                f"record: must be a list (each evaluation appends a step), got {type(self.record).__name__}"
            )

    def check_solver(self, solver: object, sde_window: object = None) -> None:
        """Refuse (ValueError) a solver along whose run the Itô density estimator does not hold: OR and AND need a
        reverse-SDE path with one evaluation per step and full noise (:data:`~fewstep.guidance.ito_density.ITO_SOLVERS`
        at ``eta = 1``, ``s_noise = 1``, no ``sde_window``). ``"sum"`` runs with any solver."""
        if self.mode == "sum":
            return
        name = getattr(solver, "name", repr(solver))
        why = f"superposition mode={self.mode!r} tracks each model's log-density with the Itô density estimator"
        if name not in ITO_SOLVERS:
            raise ValueError(
                f"solver: {why}, which holds along reverse-SDE paths with one evaluation per step; choose one of "
                f"{', '.join(ITO_SOLVERS)} (e.g. 'euler_ancestral'), got {name!r} (the probability-flow ODE would "
                "need each model's divergence; mode='sum' runs with any solver)"
            )
        for option in ("eta", "s_noise"):
            value = getattr(solver, option, 1.0)
            if value != 1.0:
                raise ValueError(f"{option}: {why}, which needs the reverse SDE's own noise ({option}=1), got {value}")
        if sde_window is not None:
            raise ValueError(f"sde_window: {why}, which needs noise on every step; leave sde_window=None")

    def wrap_prediction(self, network: Network, needs_eps: bool) -> Evaluation:
        outputs = TermOutputs(network, _sources(self.models), "models")
        m, mode, record = len(self.models), self.mode, self.record
        density = ItoDensity() if mode != "sum" else None
        feedback = float(self.feedback)
        bounds = DEFAULT_BOUNDS if self.bounds is None else (float(self.bounds[0]), float(self.bounds[1]))
        fixed = _fixed_weights(self)  # OR: the log-priors, sum: the weights; moved to the state's device once
        moved: list[Tensor] = []

        def evaluate(x: Tensor, p: Point) -> Prediction:
            preds = [convert(x, out, p, True) for out in outputs(x, p.model_time, p.t)]
            x0s = [x0 for x0, _ in preds]
            eps = [e for _, e in preds if e is not None]  # all of them: converted with eps
            if not moved:
                moved.append(fixed.to(device=x.device, dtype=accumulation_dtype(x)))
            log_q = density.observe(x, p, eps) if density is not None else None
            if log_q is None:
                kappa = moved[0].expand(x.shape[0], m)
            elif mode == "or":
                kappa = or_weights(log_q, moved[0])
            else:
                assert density is not None
                c = density.variance if density.variance is not None else 1.0
                kappa = and_weights(eps, log_q, c, feedback, bounds)
            if record is not None:
                record.append(SuperpositionStep(p.t, log_q, kappa))
            k = kappa.to(x.dtype)
            return _combine(x0s, k), (_combine(eps, k) if needs_eps else None)

        return evaluate


def or_weights(log_q: Tensor, log_priors: Tensor) -> Tensor:
    """OR's ``kappa_i = softmax_i(log q_i + log pi_i)`` (per sample; ``log_q`` (B, M), ``log_priors`` (M,))."""
    return torch.softmax(log_q + log_priors, dim=1)


def and_weights(
    eps: Sequence[Tensor], log_q: Tensor, c: float, feedback: float, bounds: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """AND's ``kappa`` (B, M): the solution of ``feedback log q_i + c (sum_j G_ij kappa_j - G_ii/2) = mu`` for every
    i with ``sum_j kappa_j = 1`` (module docstring), per sample, for the noise predictions ``eps`` at the state,
    projected onto ``bounds[0] <= kappa_i <= bounds[1]`` (:func:`project_weights`)."""
    e = torch.stack([flat(t, log_q.dtype) for t in eps], 1)  # (B, M, D)
    gram = e @ e.transpose(1, 2)  # (B, M, M)
    b, m = log_q.shape
    diag = gram.diagonal(dim1=1, dim2=2)
    ridge = RIDGE * diag.mean(1).clamp_min(torch.finfo(log_q.dtype).tiny)
    eye = torch.eye(m, dtype=log_q.dtype, device=log_q.device)
    a = log_q.new_zeros(b, m + 1, m + 1)
    a[:, :m, :m] = c * (gram + ridge[:, None, None] * eye)
    a[:, :m, m] = -1.0
    a[:, m, :m] = 1.0
    rhs = torch.cat([0.5 * c * diag - feedback * log_q, log_q.new_ones(b, 1)], 1)
    solution, _ = torch.linalg.solve_ex(a, rhs.unsqueeze(-1))  # no host sync for an error check
    return project_weights(solution[:, :m, 0], *bounds)


def project_weights(kappa: Tensor, lo: float, hi: float, iterations: int = 64) -> Tensor:
    """The Euclidean projection of each row of ``kappa`` (B, M) onto ``{sum_i k_i = 1, lo <= k_i <= hi}``:
    ``clamp(kappa_i - tau, lo, hi)`` with the shift ``tau`` found by bisection (a fixed number of halvings of
    ``[min kappa - hi, max kappa - lo]``, so no host sync; 64 halvings reach the rounding of float64). Needs
    ``M lo <= 1 <= M hi``. Non-finite rows (a singular system) become the equal weights."""
    m = kappa.shape[1]
    kappa = torch.where(torch.isfinite(kappa).all(1, keepdim=True), kappa, torch.full_like(kappa, 1.0 / m))
    low = kappa.min(1, keepdim=True).values - hi
    high = kappa.max(1, keepdim=True).values - lo
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        above = (kappa - mid).clamp(lo, hi).sum(1, keepdim=True) > 1.0
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return (kappa - 0.5 * (low + high)).clamp(lo, hi)


def _combine(parts: Sequence[Tensor], kappa: Tensor) -> Tensor:
    """``sum_i kappa_i parts_i`` with ``kappa`` (B, M) broadcast over each sample's elements."""
    shape = (kappa.shape[0],) + (1,) * (parts[0].ndim - 1)
    out = parts[0] * kappa[:, 0].reshape(shape)
    for i in range(1, len(parts)):
        out = out + parts[i] * kappa[:, i].reshape(shape)
    return out


def _fixed_weights(rule: Superposition) -> Tensor:
    """OR: the log-priors; sum: the weights (equal by default); AND: unused."""
    m = len(rule.models)
    if rule.mode == "or":
        pri = torch.tensor([1.0] * m if rule.priors is None else [float(v) for v in rule.priors], dtype=torch.float64)
        return torch.log(pri / pri.sum())
    w = [1.0 / m] * m if rule.weights is None else [float(v) for v in rule.weights]
    return torch.tensor(w, dtype=torch.float64)


def _check_bounds(bounds: object, m: int) -> None:
    """AND's ``bounds``: a pair ``lo < hi`` of finite numbers with ``m lo <= 1 <= m hi`` (some weights sum to 1)."""
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise TypeError(f"bounds: must be a pair (lo, hi) bounding each weight, got {bounds!r}")
    lo, hi = finite_number("bounds[0]", bounds[0]), finite_number("bounds[1]", bounds[1])
    if not (lo < hi and m * lo <= 1.0 <= m * hi):
        raise ValueError(
            f"bounds: need lo < hi with {m} lo <= 1 <= {m} hi (weights in the range summing to 1), got ({lo}, {hi}); "
            "the default (0, 1) keeps convex combinations, e.g. (-1, 2) lets AND extrapolate"
        )


def _numbers(name: str, values: object, m: int) -> list[float]:
    """``values`` as M finite floats (TypeError/ValueError naming ``name``)."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"{name}: must be a list of {m} numbers (one per model), got {type(values).__name__}")
    if len(values) != m:
        raise ValueError(f"{name}: need one value per model ({m}), got {len(values)}")
    return [finite_number(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _sources(models: object) -> list[Source]:
    """The models as :class:`Source` s (TypeError/ValueError naming ``models``)."""
    if not isinstance(models, Sequence) or isinstance(models, str | Mapping):
        raise TypeError(
            f"models: must be a list of models (conditionings as mappings, separate networks as callables), got "
            f"{type(models).__name__}"
        )
    if len(models) < 2:
        raise ValueError(
            f"models: a superposition needs at least two models, got {len(models)} (one model alone is sample() "
            "without guidance)"
        )
    out = []
    for i, item in enumerate(models):
        if isinstance(item, Source):
            out.append(item)
        elif item is None or isinstance(item, Mapping):
            out.append(Source(kwargs=item))
        elif callable(item):
            out.append(Source(model=item))
        else:
            raise TypeError(
                f"models[{i}]: must be a mapping of model keyword arguments (a conditioning of the run's network), "
                f"a separate model callable as model(x, time, **kwargs), or None, got {type(item).__name__}"
            )
    return out
