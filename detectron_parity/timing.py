"""Side-by-side timing of two implementations in one process, noise made visible.

Why: on a shared machine one median per side is not a comparison — load from other
processes moves both numbers. Here the two sides run in pairs, alternating which goes
first (A B, B A, A B, ...), so a slow phase of the machine hits both alike; each pair
gives one ratio, and the spread (min / median / max) of those ratios is reported with
the medians. A ratio whose spread straddles 1.0 is no result.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def spread(values: list[float]) -> dict[str, float]:
    """``{"min", "median", "max", "n"}`` of ``values``."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def ab_pairs(fn_a: Callable[[], Any], fn_b: Callable[[], Any], iters: int, warmup: int = 1,
             sync: Callable[[], None] = lambda: None,
             before: Callable[[str], None] = lambda side: None,
             after: Callable[[str], None] = lambda side: None) -> dict[str, Any]:
    """Time ``iters`` A/B pairs after ``warmup`` pairs; ``sync`` ends each timed call (device
    work is asynchronous). ``before``/``after`` are called around every timed call with
    "a" or "b" (peak-memory bookkeeping). Returns per-side seconds and the per-pair
    ratio ``b / a`` (how many times faster A is), each as :func:`spread`."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    for _ in range(warmup):
        fn_a()
        fn_b()
    sync()
    times: dict[str, list[float]] = {"a": [], "b": []}
    sides = {"a": fn_a, "b": fn_b}
    for i in range(iters):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            before(side)
            start = time.perf_counter()
            sides[side]()
            sync()
            times[side].append(time.perf_counter() - start)
            after(side)
    ratios = [b / a for a, b in zip(times["a"], times["b"])]
    return {"a": spread(times["a"]), "b": spread(times["b"]), "ratio": spread(ratios)}
