"""Live progress of a running fleet: counters, and their display on stderr.

:class:`Counters` is updated by the fleet engine as devices start, connect and
finish; :meth:`Counters.snapshot` gives a plain dict that can cross a process
boundary, and :func:`add_snapshots` sums the snapshots of several processes.
:class:`ProgressDisplay` renders snapshots: on a terminal it redraws a few lines in
place with ANSI escapes (the caller calls it about four times a second); otherwise it
writes one plain line per ``plain_interval`` seconds, so CI logs stay readable.

Nothing here reads a clock: callers pass the elapsed time in. No errors of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

Snapshot = dict[str, Any]


@dataclass(slots=True)
class Counters:
    """What a fleet has done so far (one process's share)."""

    planned: int = 0
    started: int = 0
    connected_now: int = 0
    finished: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    received: int = 0

    def on_start(self) -> None:
        """A device began its connection attempt."""
        self.started += 1

    def on_connected(self) -> None:
        """A device got its protocol acknowledgement and is now held."""
        self.connected_now += 1

    def on_finish(
        self, *, was_connected: bool, outcome: str, reason: str, sent: int, received: int
    ) -> None:
        """A device finished (``outcome``/``reason`` as in its result)."""
        self.finished += 1
        if was_connected:
            self.connected_now -= 1
        key = "connected" if outcome == "connected" else f"{outcome}:{reason or outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.sent += sent
        self.received += received

    def snapshot(self) -> Snapshot:
        """A plain, picklable copy of the counters."""
        return {
            "planned": self.planned,
            "started": self.started,
            "connected_now": self.connected_now,
            "finished": self.finished,
            "outcomes": dict(self.outcomes),
            "sent": self.sent,
            "received": self.received,
        }


def add_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> Snapshot:
    """Sum the snapshots of several processes into one."""
    total: Snapshot = Counters().snapshot()
    for snap in snapshots:
        for key, value in snap.items():
            if key == "outcomes":
                for k, v in value.items():
                    total["outcomes"][k] = total["outcomes"].get(k, 0) + v
            else:
                total[key] += value
    return total


class ProgressDisplay:
    """Renders snapshots on ``stream``: in place on a TTY, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, plain_interval: float = 2.0):
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._plain_interval = plain_interval
        self._last_plain: float | None = None
        self._drawn_lines = 0
        self._prev: tuple[float, int, int] | None = None

    def _rates(self, snap: Mapping[str, Any], elapsed: float) -> tuple[float, float]:
        done_ok = snap["outcomes"].get("connected", 0) + snap["connected_now"]
        msgs = snap["sent"]
        connects_rate = msgs_rate = 0.0
        if self._prev is not None and elapsed > self._prev[0]:
            dt = elapsed - self._prev[0]
            connects_rate = (done_ok - self._prev[1]) / dt
            msgs_rate = (msgs - self._prev[2]) / dt
        self._prev = (elapsed, done_ok, msgs)
        return connects_rate, msgs_rate

    @staticmethod
    def lines(snap: Mapping[str, Any], elapsed: float, rates: tuple[float, float]) -> list[str]:
        """The text of one frame (without escapes)."""
        refused = {
            k.split(":", 1)[1]: v for k, v in snap["outcomes"].items() if k.startswith("refused:")
        }
        errors = {
            k.split(":", 1)[1]: v for k, v in snap["outcomes"].items() if k.startswith("error:")
        }
        head = (
            f"[{elapsed:7.1f}s] started {snap['started']}/{snap['planned']}  "
            f"held {snap['connected_now']}  finished {snap['finished']}  "
            f"connects/s {rates[0]:.0f}  msgs sent {snap['sent']} recv {snap['received']} "
            f"({rates[1]:.0f}/s)"
        )
        out = [head]
        if refused:
            out.append("  refused: " + ", ".join(f"{k}={v}" for k, v in sorted(refused.items())))
        if errors:
            out.append("  errors:  " + ", ".join(f"{k}={v}" for k, v in sorted(errors.items())))
        return out

    def update(self, snap: Mapping[str, Any], elapsed: float, *, final: bool = False) -> None:
        """Show ``snap`` taken ``elapsed`` seconds into the run (``final``: always shown)."""
        rates = self._rates(snap, elapsed)
        text = self.lines(snap, elapsed, rates)
        if self._tty:
            # Move the cursor back over the previous frame and clear each line.
            prefix = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
            body = "".join(f"\x1b[2K{line}\n" for line in text)
            # A shorter frame than the last leaves stale lines; blank them.
            extra = max(self._drawn_lines - len(text), 0)
            body += "\x1b[2K\n" * extra
            self._stream.write(prefix + body)
            self._drawn_lines = len(text) + extra
        else:
            due = self._last_plain is None or elapsed - self._last_plain >= self._plain_interval
            if not (due or final):
                return
            self._last_plain = elapsed
            self._stream.write(" | ".join(text) + "\n")
        self._stream.flush()
