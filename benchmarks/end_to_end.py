"""End-to-end per-step cost of DPM-Solver++(2M): ``fewstep.sample`` against k-diffusion on the same sigmas.

k-diffusion's setting, where both libraries do the same arithmetic: the EDM schedule (alpha = 1, sigma = t),
a cheap data-prediction model ``model(x, sigma) = 0.5 x`` (one tensor operation: not free, but close), a
1x4x64x64 float32 state on the CPU with ``torch.set_num_threads(1)``, and k-diffusion's Karras grid
(``get_sigmas_karras(steps, 0.002, 80)``: ``steps`` noise levels, then 0). The rows are

- ``fewstep.sample``: ``fewstep.sample(model, x, fewstep.EDM(), "dpmpp_2m", nfe=steps, spacing=levels,
  prediction="sample", time_input="sigma")`` with the grid's nonzero levels (for EDM the schedule time is sigma);
  a repeated call finds the host side of its plan (node table, node times, solver coefficients) in fewstep's
  value-keyed caches (:mod:`fewstep.memo`), as a pipeline sampling batch after batch does;
- ``fewstep.sample, cold``: the same call with those caches emptied before it, untimed (every plan computed
  afresh, as on a first call);
- ``fewstep kdiffusion wrapper``: ``fewstep.integrations.kdiffusion.sample_dpmpp_2m(model, x, sigmas)``, the same
  solver behind k-diffusion's sampler signature (it builds the EDM schedule from the sigmas);
- ``k-diffusion``: ``k_diffusion.sampling.sample_dpmpp_2m(model, x, sigmas, disable=True)``.

Every call is timed whole, setup included (fewstep's validation, grid and coefficients; the sigmas are computed
once, outside, for all rows). The rows run interleaved (one call of each in turn, in a rotating order,
``--repeat`` times after a warm-up) and the table gives the minimum and the median, divided by the number of
steps; "setup" is the time from the call to the model's first call (minimum of separate interleaved runs),
"loop - model" the rest of the per-step time once the model's own cost (timed alone) is taken out.

Then it counts the aten operations of one whole run of each (``TorchDispatchMode``), divided by the number of
steps: on a GPU every operation on the state is a kernel launch. Operations are split into the model's own
(``model``), those on state-sized tensors (``state``) and those on scalar or small tensors (``small``: host-side
schedule arithmetic in fewstep; k-diffusion's sigma arithmetic, which runs on the device of ``sigmas``).
``--profile`` adds cProfile's view of repeated ``fewstep.sample`` runs: the 25 functions with the largest own
time, and fewstep's own functions by cumulative time.

``--clock thread`` times with this thread's CPU time (``time.thread_time``) instead of the wall clock: on a machine
shared with other work the wall clock counts the time the process waits for a core, the thread's CPU time does not
(one thread only).

Usage: ``python benchmarks/end_to_end.py [--steps 50] [--shape 1 4 64 64] [--repeat 30] [--threads 1] [--clock wall]
[--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fewstep
from fewstep.integrations import kdiffusion as fewstep_kd
from fewstep.memo import clear_caches

with warnings.catch_warnings():  # k-diffusion's optional imports (clip) warn about deprecated setuptools APIs
    warnings.simplefilter("ignore")
    from k_diffusion.sampling import get_sigmas_karras
    from k_diffusion.sampling import sample_dpmpp_2m as k_sample_dpmpp_2m

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

Model = Callable[[Tensor, Tensor], Tensor]
Runner = Callable[[Model], Tensor]


def model(x: Tensor, sigma: Tensor) -> Tensor:
    """A data-prediction (x0) model that costs one tensor operation."""
    return x * 0.5


class _FirstCall(Exception):
    """Raised by the model on its first call: ends a run when timing the setup alone."""


def _stop_model(x: Tensor, sigma: Tensor) -> Tensor:
    raise _FirstCall


@dataclass
class Impl:
    name: str
    run: Runner
    #: called before each timed call, untimed (the cold row empties fewstep's caches there)
    prepare: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    setup: list[float] = field(default_factory=list)


def implementations(x: Tensor, sigmas: Tensor) -> list[Impl]:
    steps = len(sigmas) - 1
    schedule = fewstep.EDM(SIGMA_MIN, SIGMA_MAX)
    levels = sigmas[:-1]  # the model's noise levels; fewstep's default final="zero" adds the last step to 0

    def fewstep_sample(m: Model) -> Tensor:
        return fewstep.sample(
            m, x, schedule, "dpmpp_2m", nfe=steps, spacing=levels, prediction="sample", time_input="sigma"
        )

    def fewstep_wrapper(m: Model) -> Tensor:
        return fewstep_kd.sample_dpmpp_2m(m, x, sigmas)

    def k_diffusion(m: Model) -> Tensor:
        return k_sample_dpmpp_2m(m, x, sigmas, disable=True)

    return [
        Impl("fewstep.sample", fewstep_sample),
        Impl("fewstep.sample, cold", fewstep_sample, prepare=clear_caches),
        Impl("fewstep kdiffusion wrapper", fewstep_wrapper),
        Impl("k-diffusion", k_diffusion),
    ]


#: The clock of every timing: wall-clock by default; ``--clock thread`` takes this thread's CPU time instead
#: (``time.thread_time``), which other processes on a shared machine do not inflate (one thread only).
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
clock = time.perf_counter


def _timed(fn: Callable[[], object]) -> float:
    start = clock()
    fn()
    return clock() - start


def _until_first_call(run: Runner) -> float:
    start = clock()
    try:
        run(_stop_model)
    except _FirstCall:
        return clock() - start
    raise RuntimeError("the model was never called")


def time_interleaved(impls: list[Impl], repeat: int, warmup: int) -> None:
    """One whole call of each implementation in turn, ``repeat`` times after ``warmup`` rounds (the order rotates
    every round, so that no implementation always follows the same one); then the same for the time to the
    model's first call."""
    rounds = [impls[r % len(impls) :] + impls[: r % len(impls)] for r in range(warmup + repeat)]
    for r, order in enumerate(rounds):
        for impl in order:
            impl.prepare()
            t = _timed(lambda: impl.run(model))  # noqa: B023  (called at once)
            if r >= warmup:
                impl.times.append(t)
    for r, order in enumerate(rounds):
        for impl in order:
            impl.prepare()
            t = _until_first_call(impl.run)
            if r >= warmup:
                impl.setup.append(t)


def model_cost(x: Tensor, sigma: Tensor, steps: int, repeat: int) -> float:
    """The model's own time per call (minimum over ``repeat`` loops of ``steps`` calls)."""

    def loop() -> None:
        for _ in range(steps):
            model(x, sigma)

    loop()
    return min(_timed(loop) for _ in range(repeat)) / steps


# ---------------------------------------------------------------------------------------------------------------
# Operation counts


class OpCounter(TorchDispatchMode):
    """Counts aten operations by (kind, name): ``model`` inside the model call, ``state`` when a tensor argument or
    result has the state's number of elements or more, ``small`` otherwise. Operations before the model's first
    call are also counted in :attr:`setup`."""

    def __init__(self, state_numel: int):
        super().__init__()
        self.state_numel = state_numel
        self.counts: Counter[tuple[str, str]] = Counter()
        self.setup: Counter[tuple[str, str]] = Counter()
        self.in_model = False
        self.model_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.in_model:
            kind = "model"
        else:
            tensors = [a for a in tree_flatten((args, kwargs, out))[0] if isinstance(a, Tensor)]
            kind = "state" if any(t.numel() >= self.state_numel for t in tensors) else "small"
        name = str(func).removeprefix("aten.")
        self.counts[kind, name] += 1
        if self.model_calls == 0:
            self.setup[kind, name] += 1
        return out

    def counted(self, m: Model) -> Model:
        def wrapped(x: Tensor, sigma: Tensor) -> Tensor:
            self.model_calls += 1
            self.in_model = True
            try:
                return m(x, sigma)
            finally:
                self.in_model = False

        return wrapped


def count_ops(impl: Impl, state_numel: int) -> OpCounter:
    impl.run(model)  # a repeated call, as timed
    impl.prepare()
    counter = OpCounter(state_numel)
    wrapped = counter.counted(model)
    with counter:
        impl.run(wrapped)
    return counter


KINDS = ("model", "state", "small")


def print_op_table(impls: list[Impl], counters: list[OpCounter], steps: int, top: int) -> None:
    names = [i.name for i in impls]
    width = max(len(n) for n in names) + 2
    print(f"\nAten operations per step (one whole run / {steps} steps; setup included)")
    header = f"{'kind':<6} {'operation':<34}" + "".join(f"{n:>{width}}" for n in names)
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        keys = Counter[str]()
        for c in counters:
            for (k, name), n in c.counts.items():
                if k == kind:
                    keys[name] = max(keys[name], n)
        shown = [name for name, _ in keys.most_common()]
        rest = shown[top:]
        for name in shown[:top]:
            cells = "".join(f"{c.counts[kind, name] / steps:>{width}.2f}" for c in counters)
            print(f"{kind:<6} {name:<34}{cells}")
        if rest:
            cells = "".join(f"{sum(c.counts[kind, n] for n in rest) / steps:>{width}.2f}" for c in counters)
            print(f"{kind:<6} {f'({len(rest)} other operations)':<34}{cells}")
    print("-" * len(header))
    for kind in KINDS:
        cells = "".join(
            f"{sum(n for (k, _), n in c.counts.items() if k == kind) / steps:>{width}.2f}" for c in counters
        )
        label = {"model": "model's own", "state": "sampler, on the state", "small": "sampler, scalars/host"}[kind]
        print(f"{'total':<6} {label:<34}{cells}")
    cells = "".join(f"{sum(c.counts.values()) / steps:>{width}.2f}" for c in counters)
    print(f"{'total':<6} {'all':<34}{cells}")
    cells = "".join(f"{sum(c.setup.values()):>{width}d}" for c in counters)
    print(f"{'setup':<6} {'ops before the 1st model call (run)':<34}{cells}")
    cells = "".join(f"{sum(n for (k, _), n in c.setup.items() if k == 'state'):>{width}d}" for c in counters)
    print(f"{'setup':<6} {'  of which on the state':<34}{cells}")
    cells = "".join(
        f"{sum(n for (k, _), n in (c.counts - c.setup).items() if k != 'model') / steps:>{width}.2f}" for c in counters
    )
    print(f"{'loop':<6} {'sampler ops per step, setup excluded':<34}{cells}")
    cells = "".join(
        f"{sum(n for (k, _), n in (c.counts - c.setup).items() if k == 'state') / steps:>{width}.2f}" for c in counters
    )
    print(f"{'loop':<6} {'  of which on the state':<34}{cells}")


# ---------------------------------------------------------------------------------------------------------------
# Profile


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":  # a builtin
        return name
    for marker in ("/src/fewstep/", "/site-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/src/fewstep/":
                path = "fewstep/" + path
            break
    else:
        path = os.path.basename(path)
    return f"{path}:{line} {name}"


def profile_fewstep(impl: Impl, steps: int, runs: int, top: int) -> None:
    impl.run(model)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        impl.run(model)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    print(
        f"\ncProfile of {runs} runs of {impl.name} ({steps} steps each; profiled time {total / runs * 1e3:.2f} ms per "
        f"run, inflated by the profiler)"
    )
    header = f"{'calls/run':>9} {'own us/run':>10} {'own us/step':>11} {'share':>6} {'cum us/run':>10}  function"

    def rows(items: list[tuple[tuple[str, int, str], tuple]]) -> None:
        print(header)
        print("-" * 110)
        for func, (_, nc, tt, ct, _) in items:
            print(
                f"{nc / runs:>9.1f} {tt / runs * 1e6:>10.1f} {tt / runs / steps * 1e6:>11.2f} "
                f"{tt / total:>6.1%} {ct / runs * 1e6:>10.1f}  {_where(func)}"
            )

    by_own = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    print(f"\nTop {top} by own time (tottime):")
    rows(by_own[:top])
    ours = [kv for kv in entries.items() if "/fewstep/" in kv[0][0]]
    by_cum = sorted(ours, key=lambda kv: kv[1][3], reverse=True)
    print(f"\nfewstep's functions by cumulative time (top {top}):")
    rows(by_cum[:top])


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 4, 64, 64])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="operations shown per kind in the op-count table")
    parser.add_argument("--profile", action="store_true", help="also profile repeated fewstep.sample runs")
    parser.add_argument("--profile-runs", type=int, default=200)
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall-clock, or this thread's CPU time (needs --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread: times one thread; use it with --threads 1")
    global clock
    clock = CLOCKS[args.clock]

    torch.set_num_threads(args.threads)
    steps = args.steps
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    sigmas = get_sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
    impls = implementations(x, sigmas)
    print(
        f"torch {torch.__version__}, fewstep {fewstep.__version__}, {torch.get_num_threads()} thread(s), CPU, "
        f"state {tuple(x.shape)} float32, {steps} steps (Karras sigmas {SIGMA_MAX:g} .. {SIGMA_MIN:g}, then 0), "
        f"model x0 = 0.5 x; {args.repeat} interleaved runs after {args.warmup} warm-up rounds, {args.clock} clock"
    )

    outputs = {impl.name: impl.run(model) for impl in impls}
    ref = outputs["k-diffusion"]
    for name, out in outputs.items():
        if name != "k-diffusion":
            rel = float((out - ref).norm() / ref.norm())
            print(f"agreement: |{name} - k-diffusion| / |k-diffusion| = {rel:.2e}")

    time_interleaved(impls, args.repeat, args.warmup)
    per_call = model_cost(x, sigmas[0] * x.new_ones(x.shape[0]), steps, args.repeat)
    counters = [count_ops(impl, x.numel()) for impl in impls]
    kd = next(i for i in impls if i.name == "k-diffusion")
    kd_min = min(kd.times)

    print(f"\nmodel alone: {per_call * 1e6:.1f} us per call (minimum)")
    header = (
        f"{'implementation':<28} {'us/step min':>11} {'us/step med':>11} {'setup us':>9} {'loop-model us/step':>18} "
        f"{'ops/step':>8} {'k-diff/this':>11}"
    )
    print(header)
    print("-" * len(header))
    for impl, counter in zip(impls, counters, strict=True):
        total, setup = min(impl.times), min(impl.setup)
        loop_minus_model = (total - setup) / steps - per_call
        print(
            f"{impl.name:<28} {total / steps * 1e6:>11.1f} {statistics.median(impl.times) / steps * 1e6:>11.1f} "
            f"{setup * 1e6:>9.0f} {loop_minus_model * 1e6:>18.1f} {sum(counter.counts.values()) / steps:>8.2f} "
            f"{kd_min / total:>11.2f}"
        )
    print(
        "us/step: a whole call / steps (min, median); setup: to the model's first call (min); loop-model: "
        "(min call - min setup) / steps - model's cost per call; k-diff/this: min k-diffusion / min this"
    )
    print_op_table(impls, counters, steps, args.top)

    if args.profile:
        profile_fewstep(impls[0], steps, args.profile_runs, args.profile_top)


if __name__ == "__main__":
    main()
