"""Latency accounting for the streaming pipeline: per-stage spans and percentiles. Pure.

>>> stats = LatencyStats(warmup=1)
>>> for ms in (50.0, 10.0, 12.0, 11.0):
...     stats.add({"total": ms})
>>> round(stats.summary()["stages"]["total"]["p50"], 1)
11.0
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    """Keeps the last `window` values of each named stage (ms), skipping the first `warmup` ticks,
    plus counters (ticks, skipped, late, overflows, ...)."""

    def __init__(self, *, warmup: int = 5, window: int = 100_000):
        self.warmup = warmup
        self._seen = 0
        self._stages: dict[str, deque] = {}
        self._window = window
        self.counters: dict[str, int] = {}

    def add(self, timings_ms: dict[str, float]) -> None:
        self._seen += 1
        if self._seen <= self.warmup:
            return
        for name, value in timings_ms.items():
            self._stages.setdefault(name, deque(maxlen=self._window)).append(float(value))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def last(self, name: str) -> float | None:
        values = self._stages.get(name)
        return values[-1] if values else None

    def percentile(self, name: str, q: float) -> float | None:
        values = self._stages.get(name)
        return float(np.percentile(np.fromiter(values, float), q)) if values else None

    def summary(self) -> dict:
        stages = {}
        for name, values in self._stages.items():
            x = np.fromiter(values, float)
            stages[name] = {"n": int(x.size), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
                            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean()),
                            "jitter_std": float(x.std())}
        return {"ticks_seen": self._seen, "warmup_skipped": min(self._seen, self.warmup),
                "stages": stages, "counters": dict(self.counters)}

    def format(self) -> str:
        """A human-readable multi-line summary for the end of a run."""
        s = self.summary()
        lines = [f"ticks: {s['ticks_seen']} (first {s['warmup_skipped']} not timed)"]
        for name, st in s["stages"].items():
            lines.append(f"  {name:>12s}: p50 {st['p50']:8.2f}  p90 {st['p90']:8.2f}  p99 {st['p99']:8.2f}"
                         f"  max {st['max']:8.2f} ms")
        if s["counters"]:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(s["counters"].items())))
        return "\n".join(lines)
