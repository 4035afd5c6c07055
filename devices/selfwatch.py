"""The fleet watching itself: its CPU, its event loop's lag, and whether it keeps its ramp.

A load generator that falls behind its own schedule makes the edge look slow. The
:class:`SelfWatch` task wakes every ``interval`` seconds on the fleet's loop and
records one :class:`Sample` per wake-up: how late the wake-up was (the loop's lag:
callbacks queued ahead of it), the process CPU spent since the last one, and how
many devices connected, messages went out and devices failed in between. The
:class:`BottleneckDetector` turns those samples, with the worst start lag of the
devices started in the window, into a verdict: :data:`BOTTLENECK` is said live
and noted in the report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOTTLENECK",
    "BottleneckDetector",
    "Sample",
    "SelfWatch",
    "merge_series",
    "series_from_json",
    "series_to_json",
]

#: What the fleet says, live and in its report, when it cannot keep its own ramp.
BOTTLENECK = "the load generator is the bottleneck: add --processes or shards"


@dataclass(slots=True)
class Sample:
    """One second of the run, as the fleet process saw it (summed over shards when merged)."""

    #: Whole seconds since the fleet's start.
    t: int
    connects: int = 0
    messages: int = 0
    errors: int = 0
    #: Process CPU seconds spent in this second.
    cpu_s: float = 0.0
    #: The worst lag of the event loop observed in this second, in seconds.
    loop_lag_s: float = 0.0
    #: The worst start lag of a device started in this second, in seconds.
    start_lag_s: float = 0.0

    def add(self, other: Sample) -> None:
        """Fold another process's same second into this one (sums, worst lags)."""
        self.connects += other.connects
        self.messages += other.messages
        self.errors += other.errors
        self.cpu_s += other.cpu_s
        self.loop_lag_s = max(self.loop_lag_s, other.loop_lag_s)
        self.start_lag_s = max(self.start_lag_s, other.start_lag_s)


class BottleneckDetector:
    """Says when the generator, not the edge, sets the pace.

    Behind means: a device started more than ``start_lag`` seconds after its
    schedule, or the loop woke ``loop_lag`` seconds late, in ``windows``
    consecutive windows (one slow window is a hiccup, such as a garbage collection).
    """

    def __init__(self, *, start_lag: float = 0.05, loop_lag: float = 0.1, windows: int = 2):
        self.start_lag = start_lag
        self.loop_lag = loop_lag
        self.windows = windows
        self._streak = 0
        #: True once the generator has been behind; it stays true for the run.
        self.behind = False

    def feed(self, start_lag: float, loop_lag: float) -> bool:
        """Account for one window; True exactly when this window makes the verdict."""
        if start_lag > self.start_lag or loop_lag > self.loop_lag:
            self._streak += 1
        else:
            self._streak = 0
        if not self.behind and self._streak >= self.windows:
            self.behind = True
            return True
        return False


class SelfWatch:
    """Samples the loop lag and process CPU; keeps per-second :class:`Sample` s.

    ``read()`` returns the running totals ``(connects, messages, errors)``;
    ``take_start_lag()`` the worst start lag since its last call (and resets it).
    ``on_behind`` is called once when the detector's verdict comes.
    """

    def __init__(
        self,
        read: Callable[[], tuple[int, int, int]],
        take_start_lag: Callable[[], float],
        *,
        interval: float = 0.25,
        detector: BottleneckDetector | None = None,
        on_behind: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.interval = interval
        self.detector = detector if detector is not None else BottleneckDetector()
        self.series: dict[int, Sample] = {}
        self.cpu_s = 0.0
        self.loop_lag_max_s = 0.0
        self._read = read
        self._take_start_lag = take_start_lag
        self._on_behind = on_behind
        self._clock = clock
        self._cpu = cpu
        self._t0 = clock()
        self._cpu0 = cpu()
        self._last = (0, 0, 0)
        self._last_cpu = self._cpu0

    def record(self, loop_lag: float) -> None:
        """Close one window that ended now with ``loop_lag`` (also used by tests)."""
        now_cpu = self._cpu()
        totals = self._read()
        second = int(self._clock() - self._t0)
        sample = self.series.get(second)
        if sample is None:
            sample = self.series[second] = Sample(second)
        start_lag = self._take_start_lag()
        sample.add(
            Sample(
                second,
                connects=totals[0] - self._last[0],
                messages=totals[1] - self._last[1],
                errors=totals[2] - self._last[2],
                cpu_s=now_cpu - self._last_cpu,
                loop_lag_s=loop_lag,
                start_lag_s=start_lag,
            )
        )
        self._last = totals
        self._last_cpu = now_cpu
        self.cpu_s = now_cpu - self._cpu0
        self.loop_lag_max_s = max(self.loop_lag_max_s, loop_lag)
        if self.detector.feed(start_lag, loop_lag) and self._on_behind is not None:
            self._on_behind()

    async def run(self) -> None:
        """Sample until cancelled (a task on the fleet's loop)."""
        while True:
            due = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            # How late this wake-up is: the time callbacks ahead of it took.
            self.record(max(self._clock() - due, 0.0))


def merge_series(into: dict[int, Sample], other: Mapping[int, Sample]) -> None:
    """Add another shard's samples second by second."""
    for second, theirs in other.items():
        mine = into.get(second)
        if mine is None:
            mine = into[second] = Sample(second)
        mine.add(theirs)


def series_to_json(series: Mapping[int, Sample]) -> list[dict[str, Any]]:
    """The samples in time order, rounded for the report."""
    return [
        {
            "t": s.t,
            "connects": s.connects,
            "messages": s.messages,
            "errors": s.errors,
            "cpu_s": round(s.cpu_s, 4),
            "loop_lag_ms": round(s.loop_lag_s * 1000, 2),
            "start_lag_ms": round(s.start_lag_s * 1000, 2),
        }
        for _, s in sorted(series.items())
    ]


def series_from_json(items: Iterable[Mapping[str, Any]]) -> dict[int, Sample]:
    """Rebuild :func:`series_to_json` output (``ValueError``/``KeyError`` on a bad one)."""
    out: dict[int, Sample] = {}
    for item in items:
        t = int(item["t"])
        out[t] = Sample(
            t,
            connects=int(item["connects"]),
            messages=int(item["messages"]),
            errors=int(item["errors"]),
            cpu_s=float(item["cpu_s"]),
            loop_lag_s=float(item["loop_lag_ms"]) / 1000,
            start_lag_s=float(item["start_lag_ms"]) / 1000,
        )
    return out
