"""``peak_allocated_bytes``: the most CPU memory a call holds at once, from the torch profiler's memory events."""

from __future__ import annotations

from collections.abc import Callable


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """The most CPU bytes allocated and not yet freed while ``fn()`` runs.

    The profiler reports each operator's own allocations (``self_cpu_memory_usage``; an operator's total would count
    its children's again) and each free as a ``[memory]`` event of negative size; summed in time order they give the
    bytes alive, whose maximum this returns."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
