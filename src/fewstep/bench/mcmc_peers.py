"""blackjax as the peer of ``fewstep.langevin``: its NUTS (with Stan's window adaptation) and MALA on the same
:class:`~fewstep.bench.targets.densities.DensityTarget`, returning :class:`fewstep.langevin.Chains`.

blackjax (and JAX) are optional: nothing here imports them before a run, and :func:`blackjax_available` says
whether they can be. Chains run in parallel with ``jax.vmap``, each with its own adaptation, in float64.

Gradient evaluations are counted as ``fewstep.langevin`` counts them, per chain (one evaluation of every chain):

- NUTS (Hoffman and Gelman 2014): the leapfrog steps of every iteration, warm-up included (the mean over chains,
  whose trajectories differ in length), plus the initial gradient;
- MALA (Roberts and Tweedie 1996): one per iteration (the proposal's; the current point's is kept), plus the
  initial one; its step size is adapted during warm-up by dual averaging (Hoffman and Gelman 2014, section 3.2)
  to an acceptance of 0.574 (Roberts and Rosenthal 1998), with no mass matrix (blackjax's MALA has none).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..langevin import Chains
from .targets.densities import DensityTarget

__all__ = ["PEER_SAMPLERS", "PeerRun", "blackjax_available", "run_blackjax"]

#: The blackjax samplers the benchmark runs, by the name its tables use.
PEER_SAMPLERS = ("blackjax_nuts", "blackjax_mala")
MALA_ACCEPTANCE = 0.574
NUTS_ACCEPTANCE = 0.8


def blackjax_available() -> bool:
    """Whether blackjax and JAX can be imported (nothing is imported to find out)."""
    return all(importlib.util.find_spec(m) is not None for m in ("blackjax", "jax"))


@dataclass(frozen=True)
class PeerRun:
    """A blackjax run: its ``chains`` and the wall-clock ``seconds`` (compilation included)."""

    chains: Chains
    seconds: float


def _check(sampler: str, x0: Tensor, draws: int, warmup: int) -> str:
    name = sampler.removeprefix("blackjax_")
    if name not in ("nuts", "mala"):
        raise ValueError(f"sampler: blackjax peer must be one of {', '.join(PEER_SAMPLERS)}, got {sampler!r}")
    if not isinstance(x0, Tensor) or x0.ndim != 2:
        raise ValueError(f"x0: need a tensor [chains, d], got {getattr(x0, 'shape', type(x0).__name__)}")
    for arg, value, low in (("draws", draws, 1), ("warmup", warmup, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg}: need an integer >= {low}, got {value!r}")
    if not blackjax_available():
        raise ImportError("the blackjax peer needs blackjax and jax: pip install blackjax")
    return name


def run_blackjax(target: DensityTarget, sampler: str, x0: Tensor, *, draws: int, warmup: int, seed: int = 0) -> PeerRun:
    """Run blackjax's ``sampler`` ("blackjax_nuts" or "blackjax_mala", or without the prefix) on ``target`` from
    ``x0`` [chains, d]: ``warmup`` adaptation iterations, then ``draws`` kept draws per chain."""
    name = _check(sampler, x0, draws, warmup)
    import jax

    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    logdensity = target.jax_log_prob(jax.numpy.float64)
    positions = jax.numpy.asarray(x0.detach().cpu().double().numpy())
    keys = jax.random.split(jax.random.key(seed), x0.shape[0])
    run = _nuts if name == "nuts" else _mala
    samples, acceptance, grads, step_size, inverse_mass = run(logdensity, positions, keys, draws, warmup)
    chains = Chains(
        draws=torch.as_tensor(np.array(samples)),
        acceptance=torch.as_tensor(np.array(acceptance)),
        gradient_evaluations=int(round(float(np.mean(np.array(grads))))),
        step_size=torch.as_tensor(np.array(step_size)),
        inverse_mass=None if inverse_mass is None else torch.as_tensor(np.array(inverse_mass)),
        warmup=warmup,
        sampler=f"blackjax_{name}",
    )
    return PeerRun(chains, time.perf_counter() - start)


def _nuts(logdensity: Any, positions: Any, keys: Any, draws: int, warmup: int) -> tuple[Any, ...]:
    import blackjax
    import jax

    def one_chain(key: Any, position: Any) -> tuple[Any, ...]:
        warm_key, sample_key = jax.random.split(key)
        adaptation = blackjax.window_adaptation(
            blackjax.nuts, logdensity, is_mass_matrix_diagonal=True, target_acceptance_rate=NUTS_ACCEPTANCE
        )
        (state, params), adapt_info = adaptation.run(warm_key, position, num_steps=warmup)
        kernel = blackjax.nuts(logdensity, **params)

        def step(state: Any, key: Any) -> tuple[Any, tuple[Any, ...]]:
            state, info = kernel.step(key, state)
            return state, (state.position, info.acceptance_rate, info.num_integration_steps)

        _, (samples, acceptance, steps) = jax.lax.scan(step, state, jax.random.split(sample_key, draws))
        grads = 1 + adapt_info.info.num_integration_steps.sum() + steps.sum()
        return samples, acceptance.mean(), grads, params["step_size"], params["inverse_mass_matrix"]

    return jax.jit(jax.vmap(one_chain))(keys, positions)  # type: ignore[no-any-return]


def _mala(logdensity: Any, positions: Any, keys: Any, draws: int, warmup: int) -> tuple[Any, ...]:
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    kernel = blackjax.mala.build_kernel()
    da_init, da_update, da_final = dual_averaging_adaptation(target=MALA_ACCEPTANCE)

    def one_chain(key: Any, position: Any) -> tuple[Any, ...]:
        warm_key, sample_key = jax.random.split(key)
        state = blackjax.mala.init(position, logdensity)
        initial_step = 0.1 / jnp.sqrt(position.shape[0])

        def adapt(carry: Any, key: Any) -> tuple[Any, None]:
            state, da_state = carry
            state, info = kernel(key, state, logdensity, jnp.exp(da_state.log_step_size))
            return (state, da_update(da_state, info.acceptance_rate)), None

        (state, da_state), _ = jax.lax.scan(adapt, (state, da_init(initial_step)), jax.random.split(warm_key, warmup))
        step_size = da_final(da_state)

        def step(state: Any, key: Any) -> tuple[Any, tuple[Any, Any]]:
            state, info = kernel(key, state, logdensity, step_size)
            return state, (state.position, info.acceptance_rate)

        _, (samples, acceptance) = jax.lax.scan(step, state, jax.random.split(sample_key, draws))
        return samples, acceptance.mean(), 1 + warmup + draws, step_size, None

    samples, acceptance, grads, step_size, _ = jax.jit(jax.vmap(one_chain))(keys, positions)
    return samples, acceptance, grads, step_size, None
