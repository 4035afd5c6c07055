"""One fleet over several machines, reported as one: fleet shards on NATS.

``edgesim fleet run --cluster nats://... --run ID --shard K/N`` publishes the shard's
live counters about once a second and, at the end, its whole JSON report (the same
document ``--report`` writes, HDR histograms included). ``edgesim fleet watch
--cluster nats://... --run ID`` sums the shards' latest counters for a live display
and, once every shard 1..N has sent its report, merges them with
:func:`devices.report.merge_reports`: exactly what ``edgesim fleet merge`` does with
the shards' report files.

Everything goes through one JetStream stream, so a watcher started after the shards
(or restarted) still gets every report::

    stream EDGESIM_FLEET, subjects edgesim.fleet.>, one message kept per subject, 24 h
    edgesim.fleet.<run>.progress.<K>     {"shard": "K/N", "elapsed_s": .., "snapshot": {..}}
    edgesim.fleet.<run>.final.<K>.<i>    chunk i of the shard's JSON report (UTF-8);
                                         headers Edgesim-Shard: K/N, Edgesim-Chunks: n

Reports larger than the server's maximum payload travel in chunks. A shard purges its
own subjects when it starts, so a run id can be reused once the previous run with it
has been watched; two runs under one id at the same time mix up.

The NATS client (``nats-py``, the ``cluster`` extra) is imported only here, and this
module only when ``--cluster`` is given: a default install never imports ``nats``.
The publisher runs its own event loop in a thread, so a slow or lost NATS server
never stalls the fleet's loop; a lost server costs live counters, not the run (the
final report waits up to ``final_timeout`` seconds, then the error names the server).

Errors::

    FleetError (devices.fleet)
    └── FleetBusError    NATS unreachable, no JetStream, a bad run id, a timeout
                         naming the shards still missing, shards that disagree on N
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from devices.fleet import FleetError, Shard
from devices.progress import Snapshot, add_snapshots

__all__ = [
    "STREAM",
    "FleetBusError",
    "ShardPublisher",
    "WatchResult",
    "check_run_id",
    "watch",
]

#: The JetStream stream that holds every run's progress and reports.
STREAM = "EDGESIM_FLEET"
_PREFIX = "edgesim.fleet"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Room left in a message for headers and the protocol line.
_HEADROOM = 4096
_PROGRESS_EVERY_S = 1.0


class FleetBusError(FleetError):
    """A fleet-over-NATS failure; the message names the server, run or shards."""


def check_run_id(run: str) -> str:
    """``run`` if it can be a NATS subject token, else :class:`FleetBusError`."""
    if not _RUN_ID.match(run):
        raise FleetBusError(
            f"--run {run!r}: use 1-64 letters, digits, '-' or '_' (it becomes a NATS subject)"
        )
    return run


async def _connect(url: str) -> Any:
    try:
        import nats
    except ImportError as exc:  # the cluster extra is not installed
        raise FleetBusError(
            "--cluster needs the NATS client: pip install 'edgesim[cluster]' (nats-py)"
        ) from exc
    try:
        # nats-py counts the first connect against max_reconnect_attempts: keep it
        # short, so that an unreachable server is reported within about a second ...
        nc = await nats.connect(
            servers=[url],
            connect_timeout=5,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            name="edgesim-fleet",
        )
    except Exception as exc:  # nats raises several unrelated types for "cannot connect"
        raise FleetBusError(
            f"cannot connect to NATS at {url}: {exc or type(exc).__name__}"
        ) from exc
    # ... then ride out a restart of the server for about two minutes mid-run.
    nc.options["max_reconnect_attempts"] = 120
    nc.options["reconnect_time_wait"] = 1.0
    return nc


async def _stream(nc: Any, url: str) -> Any:
    """The JetStream context, with the fleet stream created when missing."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    js = nc.jetstream(timeout=10)
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{_PREFIX}.>"],
            max_msgs_per_subject=1,
            max_age=24 * 3600.0,
        )
        try:
            await js.add_stream(config)
        except Exception as exc:
            raise FleetBusError(f"cannot create stream {STREAM} on {url}: {exc}") from exc
    except Exception as exc:
        # No responders / service unavailable: the server runs without JetStream.
        raise FleetBusError(
            f"the NATS server at {url} has no JetStream ({type(exc).__name__}); "
            "start it with -js (nats-server -js -sd DIR)"
        ) from exc
    return js


class ShardPublisher:
    """Publishes one shard's progress and final report; synchronous, thread-safe.

    Construction connects (and raises :class:`FleetBusError` at once when it cannot);
    :meth:`progress` never blocks the caller; :meth:`final` blocks until the server
    has stored the report; :meth:`close` is safe to call twice.
    """

    def __init__(self, url: str, run: str, shard: Shard, *, connect_timeout: float = 20.0) -> None:
        self.url = url
        self.run = check_run_id(run)
        self.shard = shard
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgesim-fleetbus", daemon=True
        )
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        self._last = 0.0
        self._pending: Future[Any] | None = None
        self.errors: list[str] = []
        try:
            self._call(self._open(), connect_timeout)
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any, timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError as exc:
            fut.cancel()
            raise FleetBusError(f"NATS at {self.url} did not answer within {timeout:g} s") from exc

    async def _open(self) -> None:
        self._nc = await _connect(self.url)
        self._js = await _stream(self._nc, self.url)
        # A rerun under the same id must not show the last run's counters or report.
        k = self.shard.index
        for subject in (
            f"{_PREFIX}.{self.run}.progress.{k}",
            f"{_PREFIX}.{self.run}.final.{k}.*",
        ):
            await self._js.purge_stream(STREAM, subject=subject)

    def progress(self, snapshot: Snapshot, elapsed: float) -> None:
        """Publish the counters (at most once a second; a send still pending is skipped)."""
        now = time.monotonic()
        if now - self._last < _PROGRESS_EVERY_S or self._js is None:
            return
        if self._pending is not None and not self._pending.done():
            return
        self._last = now
        body = json.dumps(
            {"shard": str(self.shard), "elapsed_s": round(elapsed, 3), "snapshot": snapshot}
        ).encode()
        subject = f"{_PREFIX}.{self.run}.progress.{self.shard.index}"
        self._pending = asyncio.run_coroutine_threadsafe(
            self._publish_quietly(subject, body), self._loop
        )

    async def _publish_quietly(self, subject: str, body: bytes) -> None:
        try:
            await self._js.publish(subject, body, stream=STREAM)
        except Exception as exc:  # live counters are best effort; the report is not
            if len(self.errors) < 5:
                self.errors.append(f"progress not published: {exc or type(exc).__name__}")

    def final(self, doc: Mapping[str, Any], *, timeout: float = 60.0) -> int:
        """Publish the shard's final JSON report; returns the number of chunks."""
        data = json.dumps(doc, separators=(",", ":")).encode()
        return int(self._call(self._final(data), timeout))

    async def _final(self, data: bytes) -> int:
        size = max(1024, int(self._nc.max_payload) - _HEADROOM)
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        headers = {"Edgesim-Shard": str(self.shard), "Edgesim-Chunks": str(len(chunks))}
        for i, chunk in enumerate(chunks):
            subject = f"{_PREFIX}.{self.run}.final.{self.shard.index}.{i}"
            try:
                await self._js.publish(subject, chunk, stream=STREAM, headers=headers)
            except Exception as exc:
                raise FleetBusError(
                    f"the report of shard {self.shard} could not be stored on {self.url}: {exc}"
                ) from exc
        return len(chunks)

    def close(self) -> None:
        """Drain and close the connection, and stop the thread."""
        if self._loop.is_closed():
            return
        if self._nc is not None:
            try:
                self._call(self._nc.drain(), 10.0)
            except Exception as exc:  # closing is best effort
                self.errors.append(f"close: {exc}")
            self._nc = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()


@dataclass
class WatchResult:
    """What a watch collected: every shard's report, by shard index (1..N)."""

    shards: int
    reports: dict[int, dict[str, Any]]
    progress: dict[int, Snapshot] = field(default_factory=dict)


@dataclass
class _Partial:
    chunks: int
    parts: dict[int, bytes] = field(default_factory=dict)


async def watch(
    url: str,
    run: str,
    *,
    timeout: float,
    on_progress: Callable[[Snapshot, float, dict[int, str]], None] | None = None,
) -> WatchResult:
    """Follow run ``run`` until every shard has sent its report, or ``timeout`` seconds.

    ``on_progress(total, elapsed, states)`` gets the sum of every shard's latest
    counters, the largest elapsed time any shard reported, and each seen shard's state
    (``running`` or ``finished``). On timeout :class:`FleetBusError` names the shards
    still missing.
    """
    check_run_id(run)
    from nats.errors import TimeoutError as NatsTimeout

    nc = await _connect(url)
    try:
        await _stream(nc, url)
        js = nc.jetstream(timeout=10)
        sub = await js.subscribe(f"{_PREFIX}.{run}.>", ordered_consumer=True)
        deadline = time.monotonic() + timeout
        total_n: int | None = None
        n_from: str = ""
        progress: dict[int, Snapshot] = {}
        elapsed: dict[int, float] = {}
        partial: dict[int, _Partial] = {}
        reports: dict[int, dict[str, Any]] = {}
        while total_n is None or len(reports) < total_n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FleetBusError(_missing(run, url, timeout, total_n, reports, progress))
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except NatsTimeout:
                continue
            try:
                shard = _take(msg, progress, elapsed, partial, reports)
            except (ValueError, KeyError, IndexError, TypeError, FleetError) as exc:
                # Someone else's message under our subjects, or a damaged one.
                raise FleetBusError(
                    f"run {run!r}: cannot read the message on {msg.subject}: {exc}"
                ) from exc
            if shard is None:
                continue
            if total_n is None:
                total_n, n_from = shard.count, str(shard)
            elif shard.count != total_n:
                raise FleetBusError(
                    f"run {run!r}: shard {shard} and shard {n_from} disagree on the number of "
                    "shards; give every shard the same N in --shard K/N"
                )
            if on_progress is not None:
                states = {
                    k: ("finished" if k in reports else "running")
                    for k in sorted(set(progress) | set(reports))
                }
                on_progress(
                    add_snapshots(progress.values()), max(elapsed.values(), default=0.0), states
                )
        await sub.unsubscribe()
        return WatchResult(shards=total_n, reports=reports, progress=progress)
    finally:
        await nc.close()


def _take(
    msg: Any,
    progress: dict[int, Snapshot],
    elapsed: dict[int, float],
    partial: dict[int, _Partial],
    reports: dict[int, dict[str, Any]],
) -> Shard | None:
    """File one message of the run; returns the shard it came from (None: not ours)."""
    parts = msg.subject.split(".")
    kind, index = parts[3], int(parts[4])
    if kind == "progress":
        body = json.loads(msg.data)
        progress[index] = dict(body["snapshot"])
        elapsed[index] = float(body.get("elapsed_s", 0.0))
        return Shard.parse(str(body["shard"]))
    if kind != "final":
        return None
    headers = msg.headers or {}
    got = partial.setdefault(index, _Partial(int(headers.get("Edgesim-Chunks", "1"))))
    got.parts[int(parts[5])] = msg.data
    if len(got.parts) == got.chunks and index not in reports:
        reports[index] = json.loads(b"".join(got.parts[i] for i in range(got.chunks)))
    return Shard.parse(headers.get("Edgesim-Shard", ""))


def _missing(
    run: str,
    url: str,
    timeout: float,
    total_n: int | None,
    reports: Mapping[int, Any],
    progress: Mapping[int, Any],
) -> str:
    if total_n is None:
        return f"timed out after {timeout:g} s: no shard of run {run!r} reported on {url}"
    missing = [k for k in range(1, total_n + 1) if k not in reports]
    running = [f"{k}/{total_n}" for k in missing if k in progress]
    silent = [f"{k}/{total_n}" for k in missing if k not in progress]
    text = f"timed out after {timeout:g} s: run {run!r} has {len(reports)} of {total_n} reports"
    if running:
        text += f"; still running (no report yet): {', '.join(running)}"
    if silent:
        text += f"; never reported: {', '.join(silent)}"
    return text
