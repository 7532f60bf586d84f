"""The value-keyed caches of a run's host-side plan (fewstep.memo): a repeated run finds its node table, node times
and solver plan in the cache and gives bit-identical samples; a changed schedule, time array, option or prediction
is a new key (nothing goes stale); the tensors handed to the model are new for every run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.memo import ValueCache, clear_caches, state_key, value_key
from fewstep.nodes import TABLES
from fewstep.prepare import TIMES


def x0_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * x / (1.0 + sigma.view(-1, *([1] * (x.dim() - 1))) ** 2) ** 0.5


def noise(dtype: torch.dtype = torch.float64, scale: float = 80.0) -> torch.Tensor:
    return torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=dtype) * scale


def run(schedule: fewstep.NoiseSchedule, solver: str = "dpmpp_2m", **kw: object) -> torch.Tensor:
    kw.setdefault("nfe", 12)
    return fewstep.sample(x0_model, noise(), schedule, solver, prediction="sample", time_input="sigma", **kw)  # type: ignore[arg-type]


def cold(schedule: fewstep.NoiseSchedule, solver: str = "dpmpp_2m", **kw: object) -> torch.Tensor:
    """The run with every cache emptied first (the plan computed afresh)."""
    clear_caches()
    return run(schedule, solver, **kw)


def test_value_keys_follow_values_not_objects() -> None:
    assert value_key(1.5) == value_key(1.5) and value_key(0.0) != value_key(-0.0)
    assert value_key(1) != value_key(1.0) != value_key(True)
    assert value_key((1.0, "a", None)) == value_key((1.0, "a", None)) != value_key([1.0, "a", None])
    a = np.linspace(0.0, 1.0, 5)
    key = value_key(a)
    assert key == value_key(a.copy()) and key == value_key(torch.from_numpy(a.copy()))
    a[2] = 7.0  # changed in place: a new key
    assert value_key(a) != key
    assert value_key(lambda t: t) is None and value_key(object()) is None and value_key({"a": 1}) is None
    assert value_key(torch.zeros(3, requires_grad=True)) is None
    assert value_key(np.zeros(1 << 20)) is None  # too large to be worth hashing
    edm = fewstep.EDM(0.002, 80.0)
    assert state_key(edm) == state_key(fewstep.EDM(0.002, 80.0)) != state_key(fewstep.EDM(0.002, 81.0))
    interpolant = fewstep.schedules.Interpolant(lambda t: 1 - t, lambda t: t)  # holds callables: no key
    assert state_key(interpolant) is None


def test_value_cache_is_least_recently_used() -> None:
    cache: ValueCache[int] = ValueCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    cache.put(None, 4)  # no key: nothing kept
    assert len(cache) == 2 and cache.get(None) is None


@pytest.mark.parametrize(
    "schedule",
    [fewstep.EDM(0.002, 80.0), fewstep.VP(), fewstep.DiscreteVP.linear(), fewstep.Flow()],
    ids=["edm", "vp", "discrete", "flow"],
)
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc_bh2", "euler"])
def test_a_repeated_run_is_cached_and_bit_identical(schedule: fewstep.NoiseSchedule, solver: str) -> None:
    kw = {} if not isinstance(schedule, fewstep.Flow) else {"time_input": "t"}
    first = fewstep.sample(x0_model, noise(), schedule, solver, nfe=12, prediction="sample", **kw)  # type: ignore[arg-type]
    entries = len(TABLES), len(TIMES)
    again = fewstep.sample(x0_model, noise(), schedule, solver, nfe=12, prediction="sample", **kw)  # type: ignore[arg-type]
    assert (len(TABLES), len(TIMES)) == entries  # found, not added
    clear_caches()
    fresh = fewstep.sample(x0_model, noise(), schedule, solver, nfe=12, prediction="sample", **kw)  # type: ignore[arg-type]
    assert torch.equal(first, again) and torch.equal(first, fresh)


def test_changed_inputs_are_new_keys() -> None:
    edm = fewstep.EDM(0.002, 80.0)
    base = run(edm)
    edm.sigma_max = edm.t_max = 40.0  # the schedule changed in place
    assert torch.equal(run(edm), cold(edm))
    assert not torch.equal(run(edm), base)
    edm.sigma_max = edm.t_max = 80.0
    times = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.2, 0.02])
    given = run(edm, spacing=times, nfe=None)
    times[3] = 2.0  # the given times changed in place
    assert torch.equal(run(edm, spacing=times, nfe=None), cold(edm, spacing=times, nfe=None))
    assert not torch.equal(run(edm, spacing=times, nfe=None), given)
    for options in ({"lower_order_final": False}, {"d2_weight": "reference"}):
        assert torch.equal(run(edm, "dpmpp_3m", **options), cold(edm, "dpmpp_3m", **options))
    solver = fewstep.solvers.get_solver("dpmpp_3m")
    first = run(edm, solver)
    solver.d2_weight = "reference"  # a solver instance changed between runs
    assert torch.equal(run(edm, solver), cold(edm, fewstep.solvers.get_solver("dpmpp_3m", d2_weight="reference")))
    assert not torch.equal(run(edm, solver), first)
    eps = fewstep.sample(lambda x, s: 0 * x, noise(), edm, "dpmpp_2m", nfe=12, time_input="sigma")
    assert torch.equal(eps, noise() * 0.0 + eps) and not torch.equal(eps, base)  # another prediction, another plan


def test_each_run_gets_its_own_time_tensors() -> None:
    """A model that writes into its time input (one sample: the time is not an expanded view) changes nothing for
    the next run."""
    seen: list[torch.Tensor] = []

    def vandal(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(sigma.clone())
        out = x0_model(x, sigma)
        sigma.mul_(0.0)
        return out

    edm = fewstep.EDM(0.002, 80.0)
    first = fewstep.sample(vandal, noise()[:1], edm, "dpmpp_2m", nfe=8, prediction="sample", time_input="sigma")
    times = [float(s[0]) for s in seen]
    seen.clear()
    again = fewstep.sample(vandal, noise()[:1], edm, "dpmpp_2m", nfe=8, prediction="sample", time_input="sigma")
    assert [float(s[0]) for s in seen] == times and min(times) > 0
    assert torch.equal(first, again)


def test_plans_kept_under_inference_mode_serve_a_gradient_run() -> None:
    edm = fewstep.EDM(0.002, 80.0)
    clear_caches()
    with torch.inference_mode():
        run(edm)
    start = noise().requires_grad_(True)
    out = fewstep.sample(x0_model, start, edm, "dpmpp_2m", nfe=12, prediction="sample", time_input="sigma", grad=True)
    out.sum().backward()
    assert start.grad is not None and torch.isfinite(start.grad).all()


def test_float32_and_float64_runs_keep_their_own_ratios() -> None:
    edm = fewstep.EDM(0.002, 80.0)
    x32 = fewstep.sample(x0_model, noise(torch.float32), edm, "dpmpp_2m", nfe=12, prediction="sample")
    x64 = fewstep.sample(x0_model, noise(torch.float64), edm, "dpmpp_2m", nfe=12, prediction="sample")
    clear_caches()
    y64 = fewstep.sample(x0_model, noise(torch.float64), edm, "dpmpp_2m", nfe=12, prediction="sample")
    y32 = fewstep.sample(x0_model, noise(torch.float32), edm, "dpmpp_2m", nfe=12, prediction="sample")
    assert x32.dtype == torch.float32 and torch.equal(x32, y32) and torch.equal(x64, y64)


def test_unchanged_time_tensors_serve_the_next_run() -> None:
    """A repeated run on the same device, dtype and batch is handed the same time tensors (no new ones per run) while
    no model wrote into them; another batch size gets its own."""
    seen: list[list[torch.Tensor]] = [[], [], []]
    edm = fewstep.EDM(0.002, 80.0)

    for k, batch in enumerate((1, 1, 2)):

        def keep(x: torch.Tensor, sigma: torch.Tensor, k: int = k) -> torch.Tensor:
            seen[k].append(sigma)
            return x0_model(x, sigma)

        fewstep.sample(keep, noise()[:batch], edm, "dpmpp_2m", nfe=8, prediction="sample", time_input="sigma")
    assert all(a is b for a, b in zip(seen[0], seen[1], strict=True))
    assert all(a.shape == (1,) and b.shape == (2,) for a, b in zip(seen[1], seen[2], strict=True))


def test_a_time_input_flagged_for_gradients_is_not_handed_to_the_next_run() -> None:
    """A model that calls ``requires_grad_()`` on its time input leaves its values alone but not its flag: the next
    run gets fresh time tensors, none of them recording gradients."""
    flags: list[bool] = []

    def flagging(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flags.append(sigma.requires_grad)
        if not sigma.requires_grad:
            sigma.requires_grad_(True)
        return x0_model(x, sigma.detach())

    edm = fewstep.EDM(0.002, 80.0)
    for _ in range(2):
        fewstep.sample(flagging, noise()[:1], edm, "dpmpp_2m", nfe=8, prediction="sample", time_input="sigma")
    assert flags == [False] * 16
