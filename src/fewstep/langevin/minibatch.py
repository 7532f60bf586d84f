"""A posterior over parameters given as a sum over data, for stochastic-gradient samplers (SGLD, structured
SG-MCMC).

``log p(theta | D) = log_prior(theta) + sum_{i=1}^N log_likelihood(theta, d_i)`` (up to a constant). A minibatch of
``n`` data drawn uniformly with replacement, independently for each chain, gives the unbiased score estimate

    g_hat(theta) = grad log_prior(theta) + (N / n) sum_{i in batch} grad log_likelihood(theta, d_i)

(by autograd). As a :class:`~fewstep.langevin.Target` the same object is the full-data posterior, so the
full-gradient samplers (ULA, MALA, kinetic Langevin) sample it too, and give the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .target import Target

__all__ = ["Data", "MinibatchTarget"]

#: The data: one tensor ``[N, ...]`` or a tuple of tensors with the same first dimension (e.g. ``(X, y)``).
Data = Tensor | tuple[Tensor, ...]
#: ``log_likelihood(theta: [chains, d], batch) -> [chains]``: the sum of the log-likelihoods of ``batch``'s data
#: (each tensor of ``batch`` shaped ``[chains, n, ...]``: row c is chain c's minibatch).
LogLikelihood = Callable[[Tensor, Data], Tensor]
LogPrior = Callable[[Tensor], Tensor]


class MinibatchTarget(Target):
    """The posterior ``log_prior(theta) + sum_i log_likelihood(theta, d_i)`` over ``data`` (module docstring), with
    minibatches of ``batch_size`` data per chain for :meth:`minibatch_score`.

    Attributes:
        size: the number of data ``N``.
        datum_gradients: per-datum log-likelihood gradients so far (the cost of stochastic-gradient samplers).
    """

    def __init__(
        self,
        log_likelihood: LogLikelihood,
        data: Data | Sequence[Tensor],
        *,
        batch_size: int,
        log_prior: LogPrior | None = None,
        name: str | None = None,
    ):
        if not callable(log_likelihood):
            raise TypeError(f"log_likelihood must be callable (theta, batch) -> Tensor[chains], got {log_likelihood!r}")
        if log_prior is not None and not callable(log_prior):
            raise TypeError(f"log_prior must be callable (theta) -> Tensor[chains] or None, got {log_prior!r}")
        parts = (data,) if isinstance(data, Tensor) else tuple(data)
        if not parts or not all(isinstance(p, Tensor) and p.ndim >= 1 for p in parts):
            raise TypeError("data must be a tensor [N, ...] or a tuple of tensors with the same first dimension N")
        size = int(parts[0].shape[0])
        if size < 1 or any(int(p.shape[0]) != size for p in parts):
            raise ValueError(
                f"data: every tensor needs the same first dimension N >= 1, got {[p.shape[0] for p in parts]}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= size:
            raise ValueError(f"batch_size must be an int in [1, N = {size}], got {batch_size!r}")
        self.log_likelihood, self.log_prior = log_likelihood, log_prior
        self.single = isinstance(data, Tensor)
        self.parts, self.size, self.batch_size = parts, size, batch_size
        self.datum_gradients = 0
        super().__init__(log_prob=self._full_log_prob, name=name or getattr(log_likelihood, "__name__", "posterior"))

    def _batch(self, index: Tensor | None, chains: int) -> Data:
        if index is None:  # the full data, the same for every chain (a view)
            parts = tuple(p.unsqueeze(0).expand(chains, *p.shape) for p in self.parts)
        else:
            parts = tuple(p[index] for p in self.parts)
        return parts[0] if self.single else parts

    def _log_post(self, theta: Tensor, index: Tensor | None, scale: float) -> Tensor:
        lp = self.log_likelihood(theta, self._batch(index, theta.shape[0]))
        if not isinstance(lp, Tensor) or lp.shape != theta.shape[:1]:
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(
                f"log_likelihood of target {self.name!r} must return the summed log-likelihood of each chain's "
                f"batch, shape [chains] = {tuple(theta.shape[:1])}, got {got}"
            )
        lp = lp * scale if scale != 1.0 else lp
        return lp + self.log_prior(theta) if self.log_prior is not None else lp

    def _full_log_prob(self, theta: Tensor) -> Tensor:
        return self._log_post(theta, None, 1.0)

    def draw_index(self, chains: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Each chain's minibatch: ``[chains, batch_size]`` indices drawn uniformly with replacement."""
        gen_device = generator.device if generator is not None else device
        index = torch.randint(self.size, (chains, self.batch_size), generator=generator, device=gen_device)
        return index.to(self.parts[0].device)

    def minibatch_score(self, theta: Tensor, index: Tensor, evaluations: int = 1) -> Tensor:
        """The unbiased score estimate at ``theta`` (``[rows, d]``) from the minibatches ``index`` (``[rows, n]``),
        detached; counts ``evaluations`` gradient evaluations (a call over several copies of the chains counts one
        per copy)."""
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            lp = self._log_post(t, index, self.size / index.shape[1])
            (grad,) = torch.autograd.grad(lp.sum(), t)
        self.gradient_evaluations += evaluations
        self.datum_gradients += index.numel()
        return grad.detach()


def stochastic_score(target: Target, theta: Tensor, index: Tensor | None, evaluations: int = 1) -> Tensor:
    """The minibatch score of a :class:`MinibatchTarget` (``index`` its minibatches), else ``target``'s exact
    score (``evaluations`` gradient evaluations counted either way)."""
    if isinstance(target, MinibatchTarget) and index is not None:
        return target.minibatch_score(theta, index, evaluations)
    score = target.score(theta)
    target.gradient_evaluations += evaluations - 1
    return score
