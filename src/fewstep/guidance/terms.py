"""Weighted terms of a guidance rule and the outputs of their branches, for rules that add weighted differences of
branch outputs (:mod:`~fewstep.guidance.perturbed`, :mod:`~fewstep.guidance.compose`).

A :class:`Term` is a weight and where its branch comes from: the run's network under other conditioning
(``kwargs``, the keys it replaces; batched with the rule's other such branches into one network call), or a separate
``model`` (a perturbed copy of the network, a second model; one more network call, counted in the same
:class:`~fewstep.model.calls.CallCount`). :class:`TermOutputs` evaluates a rule's branches with as few calls as
that allows, and :func:`add_differences` forms ``base + sum_k w_k (a_k - b_k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from ..model.network import Network
from .branches import Branches
from .rule_checks import finite_number


class Source(NamedTuple):
    """Where a branch comes from: the run's network with the conditioning keys ``kwargs`` replaced (None: its own
    conditioning), or a separate ``model`` called with ``kwargs`` (None: the run's ``model_kwargs``)."""

    kwargs: Mapping[str, Any] | None = None
    model: Callable[..., Tensor] | None = None


@dataclass(frozen=True)
class Term:
    """A branch with its ``weight``: the run's network with the conditioning keys ``kwargs`` replaced, or a separate
    ``model(x, time, **kwargs)`` (its whole conditioning ``kwargs``, default the run's ``model_kwargs``); neither: the
    run's own conditional branch."""

    weight: float
    kwargs: Mapping[str, Any] | None = None
    model: Callable[..., Tensor] | None = None

    def __post_init__(self) -> None:
        finite_number("Term.weight", self.weight)
        if self.kwargs is not None and not isinstance(self.kwargs, Mapping):
            raise TypeError(
                f"Term.kwargs: must be a mapping of model keyword arguments, got {type(self.kwargs).__name__}"
            )
        if self.model is not None and not callable(self.model):
            raise TypeError(
                f"Term.model: must be callable as model(x, time, **kwargs), got {type(self.model).__name__}"
            )

    @property
    def source(self) -> Source:
        return Source(self.kwargs, self.model)


def terms_from(conditions: object, weights: object) -> list[Term]:
    """Terms from parallel lists: each condition a mapping (``Term.kwargs``), a callable (``Term.model``) or None (the
    run's own conditioning), with the weight at the same position."""
    for name, value in (("conditions", conditions), ("weights", weights)):
        if not isinstance(value, Sequence) or isinstance(value, str | Mapping):
            raise TypeError(f"{name}: must be a list, got {type(value).__name__}")
    assert isinstance(conditions, Sequence) and isinstance(weights, Sequence)
    if len(weights) != len(conditions):
        raise ValueError(f"weights: need one weight per condition ({len(conditions)}), got {len(weights)}")
    terms = []
    for i, (c, w) in enumerate(zip(conditions, weights, strict=True)):
        if c is not None and not isinstance(c, Mapping) and not callable(c):
            raise TypeError(f"conditions[{i}]: must be a mapping of model kwargs, a model or None, got {c!r}")
        terms.append(Term(w, kwargs=c if isinstance(c, Mapping) else None, model=c if callable(c) else None))
    return terms


def check_terms(name: str, terms: object) -> tuple[Term, ...]:
    """``terms`` as a non-empty tuple of :class:`Term` (TypeError / ValueError naming ``name`` otherwise)."""
    if isinstance(terms, Term) or not isinstance(terms, Sequence) or isinstance(terms, str):
        raise TypeError(f"{name}: must be a list of fewstep.guidance.Term, got {type(terms).__name__}")
    if not terms:
        raise ValueError(f"{name}: give at least one Term(weight, kwargs=... or model=...)")
    for i, term in enumerate(terms):
        if not isinstance(term, Term):
            raise TypeError(f"{name}[{i}]: must be a fewstep.guidance.Term(weight, kwargs, model), got {term!r}")
    return tuple(terms)


class TermOutputs:
    """The outputs of the branches ``sources``: those of the run's network in one batched call
    (:class:`~fewstep.guidance.Branches`; ``name`` is the option named in its errors), each separate model in a call
    of its own."""

    def __init__(self, network: Network, sources: Sequence[Source], name: str):
        self.n = len(sources)
        self.own = [i for i, s in enumerate(sources) if s.model is None]
        self.branches = Branches(network, [sources[i].kwargs for i in self.own], name) if self.own else None
        self.separate = [(i, network.sibling(s.model, s.kwargs)) for i, s in enumerate(sources) if s.model is not None]

    def __call__(self, x: Tensor, time: Tensor, t: float) -> list[Tensor]:
        """Each source's output at ``x``, in the order of ``sources``."""
        out: list[Tensor | None] = [None] * self.n
        if self.branches is not None:
            for i, o in zip(self.own, self.branches.outputs(x, time, t), strict=True):
                out[i] = o
        for i, net in self.separate:
            out[i] = net(x, time, t)
        return out  # type: ignore[return-value]  # every index filled


def add_differences(base: Tensor, terms: Sequence[tuple[float, Tensor, Tensor]]) -> Tensor:
    """``base + sum_k w_k (a_k - b_k)`` for ``terms = [(w_k, a_k, b_k), ...]``, in that order."""
    out = base
    for w, a, b in terms:
        out = out + w * (a - b)
    return out
