"""Timing and memory helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import platform
import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile


def device_name(device: torch.device) -> str:
    """Human-readable name of the device the figures were measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` of ``device``'s type to ``dtype``, or nothing (full precision) for ``None``."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 5) -> dict[str, float]:
    """Median wall time of each function, running them in turn (a, b, a, b, …) so that both see the same
    machine load; one warm-up run each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by torch while ``fn`` runs, above the level before it.

    CUDA: ``torch.cuda.max_memory_allocated``.  CPU: the profiler's allocation timeline (allocations
    attributed to each operator at its start, frees as they happen), summed in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    timeline = []
    for e in prof.events():
        if e.name == "[memory]":
            timeline.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage > 0:
            timeline.append((e.time_range.start, e.self_cpu_memory_usage))
    level = peak = 0
    for _, delta in sorted(timeline, key=lambda t: t[0]):
        level += delta
        peak = max(peak, level)
    return peak
