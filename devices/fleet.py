"""The fleet engine: open-loop arrivals of many devices, each with its own certificate.

A fleet is a list of :class:`FleetDevice` (identity files, protocol, URL, the fault
injected into it and what the edge must answer), each with a *scheduled* start
``offset`` seconds after the fleet's start: device ``i`` of the whole fleet starts at
``i / ramp``. :class:`Fleet` starts every device at its scheduled time whatever the
others are doing (open loop: a slow or hung device never delays the next arrival),
and measures each device's connect latency from its scheduled start, so a saturated
generator shows up in the figures (no coordinated omission).

One device's connection is delegated to a :class:`DeviceRunner`: an async callable
``runner(device, run) -> result`` where the result has the shape of
``devices.device.DeviceResult`` (see :class:`devices.report.ResultLike`). The runner
calls ``run.notify_connected()`` once the protocol acknowledged the device, and keeps
it connected until ``run.hold_until`` (clock time) if set, publishing every
``run.publish_interval`` seconds.

Distribution:

- ``--shard K/N`` (:class:`Shard`): device ``i`` belongs to shard ``K`` when
  ``i % N == K - 1``. Shards keep the *global* schedule, so N machines started together
  produce the arrivals of one machine at the full rate, and the same seed gives the
  same fault plan everywhere; ``edgesim fleet merge`` adds their reports.
- ``--processes P``: the shard is split again over P local processes (spawn start
  method, each with its own uvloop); their reports are merged exactly (HDR
  histograms) and their progress summed (:func:`run_processes`).

``--duration T`` means: once the last device of the fleet has arrived, every device
stays connected for T more seconds, then disconnects cleanly. ``--msg-rate R`` is the
total message rate across the whole fleet (all shards): each device publishes every
``N / R`` seconds, N being the fleet size. Everything is bounded: each device's run is
cut at its hold time plus ``device_timeout``.

Errors::

    FleetError              bad input to the engine (names the file and line or the option),
                            or a worker process failed
    ├── ManifestError       a manifest line is malformed or names a missing file
    devices.faults.FaultError and devices.report.ReportError are the sibling roots of
    faults and reports; the CLI turns all three into CliError.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import queue
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from devices import legacykeys
from devices.device import (
    ALPN,
    Action,
    ConnectedDevice,
    DeviceSpec,
    Publish,
    Receive,
    Subscribe,
    Target,
    connected_device,
    context_for,
    protocol_label,
    run_device,
)
from devices.faults import EXPECTED, FaultMaker, Material
from devices.identity import Identity, Loader
from devices.identity import available as identity_available
from devices.progress import Counters, Snapshot, add_snapshots
from devices.protocols import ProtocolError
from devices.protocols.mqtt import MqttOptions
from devices.report import CONNECTED_MARK, FleetReport, ResultLike, StepLike
from devices.selfwatch import BOTTLENECK, SelfWatch
from devices.tlsclient import (
    AlertReceived,
    ConnectionLost,
    DeviceError,
    ServerCertificateRejected,
    make_device_context,
)
from devices.verifycache import VerifyCache

#: Protocols a device can speak, and the URL schemes that select them.
SCHEMES: Mapping[str, str] = {"mqtts": "mqtt", "https": "https", "wss": "wss"}


class FleetError(Exception):
    """Bad input to the fleet engine, or a worker process that failed."""


class ManifestError(FleetError):
    """A device manifest line is malformed or names a file that does not exist."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetDevice:
    """One device of the fleet as the engine schedules it."""

    index: int
    id: str
    cert: Path | None
    key: Path | None
    chain: Path | None
    protocol: str
    url: str
    offset: float
    fault: str | None = None
    expected: tuple[str, ...] = ("connected",)


@dataclass(slots=True, kw_only=True)
class DeviceRun:
    """What the engine tells a runner about one device's run (clock times)."""

    scheduled: float
    hold_until: float | None
    publish_interval: float | None
    notify_connected: Callable[[], None]


class DeviceRunner(Protocol):
    """Connects one device and returns its result; never raises for a refused device."""

    def __call__(self, device: FleetDevice, run: DeviceRun, /) -> Awaitable[ResultLike]: ...


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``K/N`` with ``1 <= K <= N``."""
        try:
            k, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise FleetError(f"--shard {text!r}: expected K/N, for example 2/4") from None
        if not 1 <= k <= n:
            raise FleetError(f"--shard {text!r}: K must be between 1 and N")
        return cls(k, n)

    def owns(self, index: int) -> bool:
        """Whether device ``index`` of the whole fleet belongs to this shard."""
        return index % self.count == self.index - 1

    def split(self, parts: int) -> list[Shard]:
        """This shard split into ``parts`` sub-shards (for local processes)."""
        n = self.count * parts
        return [Shard(self.index + self.count * p, n) for p in range(parts)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# -- manifests -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One device of ``devices/manifest.jsonl`` (paths resolved against the manifest)."""

    id: str
    cert: Path
    key: Path
    chain: Path | None


def load_manifest(path: Path) -> list[ManifestEntry]:
    """Read a JSON-lines device manifest; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    entries: list[ManifestEntry] = []
    base = path.parent
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected an object")
        for key in ("id", "cert", "key"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ManifestError(f"{where}: missing or empty field {key!r}")
        chain = obj.get("chain")
        if chain is not None and not isinstance(chain, str):
            raise ManifestError(f"{where}: field 'chain' must be a path")
        entry = ManifestEntry(
            id=obj["id"],
            cert=base / obj["cert"],
            key=base / obj["key"],
            chain=(base / chain) if chain else None,
        )
        for p in (entry.cert, entry.key, entry.chain):
            if p is not None and not p.is_file():
                raise ManifestError(f"{where}: {p} does not exist")
        entries.append(entry)
    if not entries:
        raise ManifestError(f"{path}: the manifest lists no devices")
    return entries


# -- planning -----------------------------------------------------------------


def protocol_of(url: str) -> str:
    """The device protocol a target URL selects (``mqtts://`` -> ``mqtt``, ...)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise FleetError(f"--url {url!r}: scheme must be one of {', '.join(SCHEMES)}")
    return SCHEMES[scheme]


def pick_urls(urls: Sequence[str], protocol: str) -> list[str]:
    """The URLs a fleet spreads over: all of them for ``mix``, else those of ``protocol``."""
    if not urls:
        raise FleetError("give at least one --url")
    if protocol == "mix":
        return list(urls)
    chosen = [u for u in urls if protocol_of(u) == protocol]
    if not chosen:
        raise FleetError(f"--protocol {protocol}: no --url with that protocol was given")
    return chosen


def plan_fleet(
    entries: Sequence[ManifestEntry],
    *,
    devices: int,
    urls: Sequence[str],
    ramp: float | None,
    faults: Mapping[int, str],
    shard: Shard,
    maker: FaultMaker | None,
) -> list[FleetDevice]:
    """The devices of ``shard``, with their schedule, target and (faulty) material.

    Device ``i`` of the whole fleet uses manifest entry ``i`` (cycling if the fleet
    is larger than the manifest would be wrong: every device has its own certificate,
    so that is an error), URL ``i % len(urls)``, and starts at ``i / ramp``.
    """
    if devices < 1:
        raise FleetError("--devices must be at least 1")
    if devices > len(entries):
        raise FleetError(
            f"--devices {devices}: the manifest holds only {len(entries)} devices, "
            "and every device needs its own certificate"
        )
    if ramp is not None and ramp <= 0:
        raise FleetError("--ramp must be a positive rate (devices per second)")
    for u in urls:
        protocol_of(u)
    planned: list[FleetDevice] = []
    for i in range(devices):
        if not shard.owns(i):
            continue
        entry = entries[i]
        kind = faults.get(i)
        material = Material(entry.cert, entry.key, entry.chain)
        if kind is not None:
            if maker is None:
                raise FleetError("faults were requested but no fault maker was given")
            material = maker.make(kind, entry.id)
        url = urls[i % len(urls)]
        planned.append(
            FleetDevice(
                index=i,
                id=entry.id,
                cert=material.cert,
                key=material.key,
                chain=material.chain,
                protocol=protocol_of(url),
                url=url,
                offset=(i / ramp) if ramp else 0.0,
                fault=kind,
                expected=EXPECTED[kind or "none"],
            )
        )
    return planned


# -- the engine -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Failed:
    """The result the engine records when a runner overran its budget or crashed."""

    protocol: str
    reason: str
    outcome: str = "error"
    steps: tuple[StepLike, ...] = ()
    messages_sent: int = 0
    messages_received: int = 0
    delivery_latencies: tuple[float, ...] = ()


class Fleet:
    """Runs devices open-loop on the running event loop and builds a :class:`FleetReport`.

    ``hold`` (seconds) keeps devices connected until that long after the last
    scheduled arrival (None: devices disconnect as soon as they are through);
    ``publish_interval`` is each device's time between messages; ``device_timeout``
    bounds each device's connection attempt (its hold time comes on top).
    ``lead`` is the delay between :meth:`run` and the first scheduled arrival.
    """

    def __init__(
        self,
        devices: Sequence[FleetDevice],
        runner: DeviceRunner,
        *,
        hold: float | None = None,
        publish_interval: float | None = None,
        device_timeout: float = 30.0,
        lead: float = 0.05,
        counters: Counters | None = None,
        shard_label: str = "1/1",
        started_iso: str = "",
        on_behind: Callable[[], None] | None = None,
    ) -> None:
        self.devices = sorted(devices, key=lambda d: (d.offset, d.index))
        self.runner = runner
        self.hold = hold
        self.publish_interval = publish_interval
        self.device_timeout = device_timeout
        self.lead = lead
        self.counters = counters if counters is not None else Counters()
        self.counters.planned += len(self.devices)
        self.report = FleetReport(shards=[shard_label], started=started_iso)
        self.start_time: float | None = None
        #: Told once, live, when the fleet cannot keep its ramp (default: stderr).
        self.on_behind = on_behind
        # Totals and the window's worst start lag, for the self-watch's samples.
        self._connects = 0
        self._errors = 0
        self._window_start_lag = 0.0

    def _totals(self) -> tuple[int, int, int]:
        return self._connects, self.counters.sent, self._errors

    def _take_start_lag(self) -> float:
        worst, self._window_start_lag = self._window_start_lag, 0.0
        return worst

    def _behind(self) -> None:
        self.report.note(BOTTLENECK)
        if self.on_behind is not None:
            self.on_behind()
        else:
            print(f"edgesim fleet: {BOTTLENECK}", file=sys.stderr, flush=True)

    async def run(self, *, last_offset: float | None = None) -> FleetReport:
        """Run every device and return the report.

        ``last_offset`` is the last arrival of the *whole* fleet (all shards), from
        which the hold time counts; default: this engine's own last arrival.
        """
        loop = asyncio.get_running_loop()
        # Measure with a precise clock: uvloop's loop.time() counts whole milliseconds
        # (libuv's cached uv_now), too coarse for connect and delivery latencies. Every
        # wait below is a relative sleep, so the loop's own clock never has to agree.
        clock = CLOCK
        t0 = clock() + self.lead
        self.start_time = t0
        if last_offset is None:
            last_offset = self.devices[-1].offset if self.devices else 0.0
        hold_until = None if self.hold is None else t0 + last_offset + self.hold
        tasks: set[asyncio.Task[None]] = set()
        all_done = loop.create_future()
        remaining = len(self.devices)
        if remaining == 0:
            all_done.set_result(None)

        def finished(task: asyncio.Task[None]) -> None:
            nonlocal remaining
            tasks.discard(task)
            remaining -= 1
            if remaining == 0 and not all_done.done():
                all_done.set_result(None)

        watch = SelfWatch(self._totals, self._take_start_lag, on_behind=self._behind, clock=clock)
        watcher = loop.create_task(watch.run())
        try:
            for device in self.devices:
                due = t0 + device.offset
                delay = due - clock()
                if delay > 0:
                    # The scheduler's own timer: arrivals follow the plan, not completions.
                    await asyncio.sleep(delay)
                task = loop.create_task(self._one(device, due, hold_until, clock))
                tasks.add(task)
                task.add_done_callback(finished)
            await all_done
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        watch.record(0.0)  # the last partial window
        self.report.series = watch.series
        self.report.fleet_cpu_s = watch.cpu_s
        self.report.loop_lag_max_s = watch.loop_lag_max_s
        self.report.duration_s = clock() - t0
        return self.report

    async def _one(
        self,
        device: FleetDevice,
        scheduled: float,
        hold_until: float | None,
        clock: Callable[[], float],
    ) -> None:
        started = clock()
        self.counters.on_start()
        self._window_start_lag = max(self._window_start_lag, started - scheduled)
        connected = False

        def notify_connected() -> None:
            nonlocal connected
            if not connected:
                connected = True
                self._connects += 1
                self.counters.on_connected()

        run = DeviceRun(
            scheduled=scheduled,
            hold_until=hold_until,
            publish_interval=self.publish_interval,
            notify_connected=notify_connected,
        )
        budget = self.device_timeout + max((hold_until or 0.0) - started, 0.0)
        result: ResultLike
        try:
            async with asyncio.timeout(budget):
                result = await self.runner(device, run)
        except TimeoutError:
            result = _Failed(device.protocol, "timeout")
        except Exception as exc:  # a runner bug must cost one device, not the fleet
            result = _Failed(device.protocol, f"internal:{type(exc).__name__}:{exc}")
        self.report.add(
            device_id=device.id,
            fault=device.fault,
            expected=device.expected,
            offset=device.offset,
            start_lag=started - scheduled,
            result=result,
        )
        if result.outcome != "connected" and "connected" in device.expected:
            # A healthy device that did not connect; a fault's refusal is expected.
            self._errors += 1
        self.counters.on_finish(
            was_connected=connected,
            outcome=result.outcome,
            reason=result.reason,
            sent=result.messages_sent,
            received=result.messages_received,
        )


# -- running in this process, or in several -------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    """Everything a runner factory needs, picklable so that worker processes get it."""

    ca: Path | None = None
    sni: str | None = None
    qos: int = 0
    payload_size: int = 32
    device_timeout: float = 10.0
    probe_message: bool = False
    #: Highest TLS version devices offer ("1.2" or "1.3"; None: the library's highest).
    tls_max: str | None = None
    #: Each device's own topic (``{id}``: its id); the edge's default policy grants
    #: a device ``devices/<its identity>/#``.
    topic: str = "devices/{id}/fleet"
    #: The MQTT version of the devices on MQTT URLs: "3.1.1", "5", or "mix" (devices
    #: of odd index speak 5, the others 3.1.1).
    mqtt_version: str = "3.1.1"
    #: How the fleet process's OpenSSL handles EC and RSA keys: "legacy" (its built-in
    #: methods, :mod:`devices.legacykeys`, where that helps: OpenSSL 3.0) or "provider"
    #: (OpenSSL's default). The edge is never changed.
    tls_keys: str = "provider"
    #: Whether devices sharing a context verify the edge's chain once per distinct
    #: chain and host name (:mod:`devices.verifycache`) instead of once per device.
    verify_cache: bool = False


#: A runner factory: ``factory(settings) -> DeviceRunner``, named "module:attr" for workers.
RunnerFactory = Callable[[RunnerSettings], DeviceRunner]


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetJob:
    """A planned fleet (or shard) ready to run here or in worker processes."""

    devices: tuple[FleetDevice, ...]
    fleet_size: int
    runner: str = "devices.fleet:make_runner"
    settings: RunnerSettings = RunnerSettings()
    hold: float | None = None
    msg_rate: float | None = None
    shard: Shard = Shard()
    started_iso: str = ""
    lead: float = 0.2
    schedule_end: float | None = None
    loop: str = "uvloop"

    @property
    def last_offset(self) -> float:
        """The whole fleet's last scheduled arrival (for the common hold deadline).

        ``schedule_end`` when given (a shard does not see the other shards' devices),
        else the last arrival among this job's devices.
        """
        if self.schedule_end is not None:
            return self.schedule_end
        return max((d.offset for d in self.devices), default=0.0)

    @property
    def publish_interval(self) -> float | None:
        """Seconds between one device's messages (``msg_rate`` is fleet-wide)."""
        if not self.msg_rate or self.hold is None:
            return None
        return self.fleet_size / self.msg_rate

    def part(self, shard: Shard) -> FleetJob:
        """The sub-job of the devices that ``shard`` owns (keeping the whole schedule)."""
        return replace(
            self,
            devices=tuple(d for d in self.devices if shard.owns(d.index)),
            shard=shard,
            # Frozen before splitting: every part holds until the same moment.
            schedule_end=self.last_offset,
        )


def resolve_runner(name: str) -> RunnerFactory:
    """Import a runner factory named ``module:attr``."""
    module_name, _, attr = name.partition(":")
    try:
        factory: RunnerFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FleetError(f"runner {name!r} cannot be imported: {exc}") from exc
    return factory


async def run_job_async(
    job: FleetJob,
    *,
    counters: Counters | None = None,
    on_tick: Callable[[Snapshot, float], None] | None = None,
    tick: float = 0.25,
) -> FleetReport:
    """Run ``job`` on the running loop; ``on_tick(snapshot, elapsed)`` every ``tick`` s."""
    runner = resolve_runner(job.runner)(job.settings)
    fleet = Fleet(
        job.devices,
        runner,
        hold=job.hold,
        publish_interval=job.publish_interval,
        device_timeout=job.settings.device_timeout,
        lead=job.lead,
        counters=counters,
        shard_label=str(job.shard),
        started_iso=job.started_iso,
    )
    loop = asyncio.get_running_loop()
    begin = loop.time()
    ticker: asyncio.Task[None] | None = None
    if on_tick is not None:
        callback = on_tick

        async def ticking() -> None:
            while True:
                await asyncio.sleep(tick)
                callback(fleet.counters.snapshot(), loop.time() - begin)

        ticker = loop.create_task(ticking())
    try:
        report = await fleet.run(last_offset=job.last_offset)
        report.tls_keys = str(getattr(runner, "tls_keys", ""))
        cache = getattr(runner, "verify_cache", None)
        if cache is not None:
            report.chains_verified, report.chains_reused = cache.misses, cache.hits
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        closer = getattr(runner, "aclose", None)
        if closer is not None:
            await closer()
    if on_tick is not None:
        on_tick(fleet.counters.snapshot(), loop.time() - begin)
    return report


def new_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop: ``uvloop`` (where installed) or the stdlib's ``asyncio``."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.new_event_loop()
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    if kind == "asyncio":
        return asyncio.new_event_loop()
    raise FleetError(f"--loop {kind!r}: expected uvloop or asyncio")


def run_job(
    job: FleetJob, *, on_tick: Callable[[Snapshot, float], None] | None = None
) -> FleetReport:
    """Run ``job`` in this process on a fresh event loop of ``job.loop``'s kind."""
    new_loop(job.loop).close()  # fail early, and by name, on an unknown kind
    with asyncio.Runner(loop_factory=lambda: new_loop(job.loop)) as runner:
        return runner.run(run_job_async(job, on_tick=on_tick))


def _worker(job: FleetJob, part: int, results: Any) -> None:
    """Worker process entry: run one part, stream progress, send the report back."""
    try:

        def on_tick(snap: Snapshot, elapsed: float) -> None:
            results.put(("progress", part, snap))

        report = run_job(job, on_tick=on_tick)
        results.put(("done", part, report.to_json()))
    except BaseException as exc:  # report every failure to the parent, then exit
        results.put(("failed", part, f"{type(exc).__name__}: {exc}"))


def run_processes(
    job: FleetJob,
    processes: int,
    *,
    on_tick: Callable[[Snapshot, float], None] | None = None,
    deadline: float | None = None,
) -> FleetReport:
    """Run ``job`` split over ``processes`` worker processes and merge their reports.

    ``deadline`` bounds the whole run in seconds (default: the schedule, the hold and
    the device timeout, plus a minute for process start-up).
    """
    if processes < 1:
        raise FleetError("--processes must be at least 1")
    if processes == 1:
        return run_job(job, on_tick=on_tick)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    parts = [job.part(s) for s in job.shard.split(processes)]
    workers = [
        ctx.Process(target=_worker, args=(p, i, results), name=f"edgesim-fleet-{i + 1}")
        for i, p in enumerate(parts)
    ]
    budget = deadline or (job.last_offset + (job.hold or 0.0) + job.settings.device_timeout + 60.0)
    begin = time.monotonic()
    snapshots: dict[int, Snapshot] = {}
    reports: dict[int, FleetReport] = {}
    failures: list[str] = []
    try:
        for w in workers:
            w.start()
        while len(reports) + len(failures) < len(workers):
            elapsed = time.monotonic() - begin
            if elapsed > budget:
                failures.append(f"workers did not finish within {budget:.0f}s")
                break
            try:
                kind, part, payload = results.get(timeout=0.25)
            except queue.Empty:
                dead = [
                    i
                    for i, w in enumerate(workers)
                    if w.exitcode not in (None, 0) and i not in reports
                ]
                if dead:
                    failures.append(
                        f"worker {dead[0] + 1} exited with status {workers[dead[0]].exitcode}"
                    )
                    break
                continue
            if kind == "progress":
                snapshots[part] = payload
                if on_tick is not None:
                    on_tick(add_snapshots(snapshots.values()), elapsed)
            elif kind == "done":
                reports[part] = FleetReport.from_json(payload, source=f"worker {part + 1}")
            else:
                failures.append(f"worker {part + 1}: {payload}")
    finally:
        for w in workers:
            # Workers that reported are exiting; a failed run's others are stopped.
            w.join(timeout=0.5 if failures else 10.0)
            if w.is_alive():
                w.terminate()
                w.join(timeout=10.0)
            w.close()
        results.close()
        results.join_thread()
    if failures:
        raise FleetError("; ".join(failures))
    merged = FleetReport()
    for i in sorted(reports):
        merged.merge(reports[i])
    merged.shards = [str(job.shard)]
    return merged


# -- the real runner: devices.device -------------------------------------------------

#: ``devices.device`` step names -> the report's step names.
_STEP_NAMES: Mapping[str, str] = {
    "tcp_connect": "tcp",
    "tls_handshake": "tls",
    "mqtt_connack": "ack",
    "http_status": "ack",
    "ws_accept": "ack",
}

_STAMP = struct.Struct("!d")

#: The options every MQTT 5 fleet device shares: one object, no per-device work.
_MQTT5 = MqttOptions(version=5)

_MQTT_VERSIONS = ("3.1.1", "5", "mix")
_TLS_KEYS = ("legacy", "provider")

_TLS_VERSIONS: Mapping[str | None, ssl.TLSVersion | None] = {
    None: None,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True, slots=True)
class RunStep:
    """One step of a device's run in the report's vocabulary (seconds from its schedule)."""

    name: str
    t_start: float
    duration: float
    ok: bool


@dataclass(slots=True)
class RunResult:
    """A device's result as the fleet records it (``devices.report.ResultLike``)."""

    outcome: str
    reason: str
    protocol: str
    steps: list[RunStep] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0
    delivery_latencies: list[float] = field(default_factory=list)
    message: str = ""


def _refusal(exc: DeviceError, acknowledged: bool) -> tuple[str, str]:
    """(outcome, reason) for an error of a held device, as ``run_device`` classifies it."""
    if isinstance(exc, AlertReceived):
        return ("error", f"dropped:{exc.alert}") if acknowledged else ("refused", exc.alert)
    if acknowledged:
        return "error", f"dropped:{exc.reason}"
    if isinstance(exc, (ServerCertificateRejected, ConnectionLost, ProtocolError)):
        return "refused", exc.reason
    return "error", exc.reason


class DeviceModuleRunner:
    """Runs fleet devices with :mod:`devices.device`, each with its own TLS context.

    Without a hold time a device connects with ``run_device`` (the full timed trace:
    tcp, tls, ack) and, with ``probe_message``, subscribes to its own topic,
    publishes one message and waits for it (``first_message``). With a hold time it
    connects with ``connected_device`` (no full trace, to stay small: only the times
    of the tcp, tls and ack steps), subscribes to its own topic (``devices/<id>/fleet``) and publishes
    every ``publish_interval`` seconds on a fixed schedule until ``hold_until``. Each
    payload carries its *intended* send time, so delivery latency includes any delay
    in sending (no coordinated omission on messages either).
    """

    def __init__(self, settings: RunnerSettings) -> None:
        if settings.ca is None:
            raise FleetError("--ca (the CA that signed the edge's server certificate) is required")
        try:
            self.ca_pem = settings.ca.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(f"--ca {settings.ca}: cannot read ({exc})") from exc
        if settings.tls_max not in _TLS_VERSIONS:
            raise FleetError(f"--tls-max {settings.tls_max!r}: expected 1.2 or 1.3")
        if settings.mqtt_version not in _MQTT_VERSIONS:
            raise FleetError(f"--mqtt-version {settings.mqtt_version!r}: expected 3.1.1, 5 or mix")
        if settings.tls_keys not in _TLS_KEYS:
            raise FleetError(f"--tls-keys {settings.tls_keys!r}: expected legacy or provider")
        self.settings = settings
        #: What the fleet's OpenSSL uses for EC/RSA keys, in words (the report's generator).
        #: The shared contexts' chain verifications (None: every chain verified in full).
        self.verify_cache = VerifyCache() if settings.verify_cache else None
        if settings.tls_keys == "legacy":
            self.tls_keys = legacykeys.install()
        else:
            legacykeys.uninstall()  # an earlier job in this process may have installed them
            self.tls_keys = "provider (asked for)"
        self._tls_max = _TLS_VERSIONS[settings.tls_max]
        #: Chain PEM by path, read once (most devices share one intermediate).
        self._chains: dict[Path, bytes] = {}
        # One context per (scheme, insecure) for every device, each device's certificate
        # and key set on its own connection (None: this Python cannot; a context each).
        self._loader = Loader() if identity_available() else None
        self._shared: dict[tuple[str, bool], ssl.SSLContext] = {}
        # Per (URL, MQTT 5?): the target and the protocol name results carry, built once.
        self._targets: dict[tuple[str, bool], tuple[Target, str]] = {}

    def _target(self, url: str, index: int = 0) -> tuple[Target, str]:
        version = self.settings.mqtt_version
        v5 = version == "5" or (version == "mix" and index % 2 == 1)
        found = self._targets.get((url, v5))
        if found is None:
            target = Target(
                url=url, ca_pem=self.ca_pem, sni=self.settings.sni, mqtt=_MQTT5 if v5 else None
            )
            found = self._targets[(url, v5)] = (target, protocol_label(target))
        return found

    def _payload(self, intended: float) -> bytes:
        size = max(self.settings.payload_size, _STAMP.size)
        return _STAMP.pack(intended) + b"x" * (size - _STAMP.size)

    async def __call__(self, device: FleetDevice, run: DeviceRun, /) -> RunResult:
        spec = DeviceSpec(
            id=device.id,
            cert_path=str(device.cert) if device.cert else None,
            key_path=str(device.key) if device.key else None,
            chain_path=str(device.chain) if device.chain else None,
        )
        target, label = self._target(device.url, device.index)
        try:
            context, identity = self._context(device, spec, target)
        except DeviceError as exc:
            return RunResult("error", exc.reason, label, message=str(exc))
        if run.hold_until is None and (self.settings.probe_message or device.fault is not None):
            # The full timed trace: a faulty device's refusal is classified by it.
            return await self._once(device, spec, target, context, run, identity)
        # A healthy device that only connects takes the lean path of held devices
        # (no record parsing, no trace): the trace cost about 0.6 ms of CPU a connect.
        return await self._held(device, spec, target, context, run, label, identity)

    def _shared_context(self, target: Target) -> ssl.SSLContext:
        scheme = target.parts()[0]
        found = self._shared.get((scheme, target.insecure))
        if found is None:
            found = self._shared[(scheme, target.insecure)] = make_device_context(
                ca_pem=target.ca_pem,
                alpn=ALPN[scheme],
                check_hostname=not target.insecure,
                max_version=self._tls_max,
            )
            if self.verify_cache is not None:
                self.verify_cache.attach(found)
        return found

    def _context(
        self, device: FleetDevice, spec: DeviceSpec, target: Target
    ) -> tuple[ssl.SSLContext, Identity | None]:
        """The context the device connects with, and its identity when that context is shared.

        Where :mod:`devices.identity` works, every device shares one context per scheme
        and presents its own certificate and key, set on its own connection: building
        a context per device (``load_cert_chain`` and the roots) cost about 2 ms of
        CPU and 26 KiB, more than the rest of the connect. Elsewhere, and for material
        that module does not load (an encrypted key, a mismatched pair), the device
        gets a context of its own as before, which also reports bad material in its
        usual words. Files are read once, nothing is hashed, and the chain file,
        shared by most devices, is read once per runner.
        """
        if device.cert is None:
            return self._own_context(context_for(spec, target, cache=False)), None
        scheme = target.parts()[0]
        try:
            with open(device.cert, "rb") as f:
                cert = f.read()
            key = b""
            if device.key is not None:
                with open(device.key, "rb") as f:
                    key = f.read()
            chain = b""
            if device.chain is not None:
                chain = self._chains.get(device.chain, b"")
                if not chain:
                    with open(device.chain, "rb") as f:
                        chain = self._chains[device.chain] = f.read()
        except OSError as exc:
            raise DeviceError(
                f"device {device.id}: cannot read its material ({exc})", reason="bad-input"
            ) from exc
        if self._loader is not None:
            # Only an HTTPS session reconnects (when the edge closes its connection).
            identity = self._loader.load(cert, key or cert, chain, reusable=scheme == "https")
            if identity is not None:
                return self._shared_context(target), identity
        context = make_device_context(
            ca_pem=target.ca_pem,
            cert_pem=cert + (b"\n" + chain if chain else b""),
            key_pem=key or cert,
            alpn=ALPN[scheme],
            check_hostname=not target.insecure,
        )
        return self._own_context(context), None

    def _own_context(self, context: ssl.SSLContext) -> ssl.SSLContext:
        if self._tls_max is not None:
            context.maximum_version = self._tls_max
        return context

    async def aclose(self) -> None:
        """Free the chains the identity loader parsed (called when the fleet is over)."""
        if self._loader is not None:
            self._loader.close()

    async def _once(
        self,
        device: FleetDevice,
        spec: DeviceSpec,
        target: Target,
        context: ssl.SSLContext,
        run: DeviceRun,
        identity: Identity | None,
    ) -> RunResult:
        topic = self.settings.topic.replace("{id}", device.id)
        qos = self.settings.qos
        actions: list[Action] = []
        if self.settings.probe_message:
            actions = [
                Subscribe(topic, qos),
                Publish(topic, self._payload(0.0), qos),
                Receive(1),
            ]
        res = await run_device(
            spec,
            target,
            actions=actions,
            clock=CLOCK,
            start=run.scheduled,
            timeout=self.settings.device_timeout,
            context=context,
            identity=identity,
        )
        out = RunResult(
            res.outcome,
            res.reason,
            res.protocol or device.protocol,
            messages_sent=res.messages_sent,
            messages_received=res.messages_received,
            delivery_latencies=list(res.delivery_latencies),
            message=res.message,
        )
        for step in res.steps:
            name = _STEP_NAMES.get(step.name)
            if name is not None:
                out.steps.append(RunStep(name, step.t_start, step.duration, step.ok))
                if name == "ack" and step.ok and res.outcome == "connected":
                    run.notify_connected()
        if res.delivery_latencies:
            publish = next((s for s in res.steps if s.name == "publish"), None)
            t0 = publish.t_start if publish is not None else 0.0
            out.steps.append(RunStep("first_message", t0, res.delivery_latencies[0], True))
        return out

    async def _held(
        self,
        device: FleetDevice,
        spec: DeviceSpec,
        target: Target,
        context: ssl.SSLContext,
        run: DeviceRun,
        label: str,
        identity: Identity | None,
    ) -> RunResult:
        clock = CLOCK
        out = RunResult("error", "", label)
        acknowledged = False
        try:
            async with connected_device(
                spec,
                target,
                clock=clock,
                timeout=self.settings.device_timeout,
                context=context,
                identity=identity,
            ) as held:
                acknowledged = True
                out.steps.append(RunStep(CONNECTED_MARK, clock() - run.scheduled, 0.0, True))
                out.steps.extend(_connect_steps(held.timings, run.scheduled))
                run.notify_connected()
                if run.hold_until is not None and run.publish_interval is None:
                    # Held silently: a plain sleep. _hold's frame (its closures' cells
                    # are made on entry) cost about 0.8 KiB per held device.
                    remaining = run.hold_until - clock()
                    if remaining > 0:
                        await asyncio.sleep(remaining)
                elif run.hold_until is not None:
                    await self._hold(device, held, run, out)
                out.outcome = "connected"
        except DeviceError as exc:
            out.outcome, out.reason = _refusal(exc, acknowledged)
            out.message = str(exc)
        return out

    async def _hold(
        self, device: FleetDevice, held: ConnectedDevice, run: DeviceRun, out: RunResult
    ) -> None:
        loop = asyncio.get_running_loop()
        assert run.hold_until is not None
        remaining = run.hold_until - CLOCK()
        if run.publish_interval is None:
            if remaining > 0:
                await asyncio.sleep(remaining)
            return
        topic = self.settings.topic.replace("{id}", device.id)
        qos = self.settings.qos
        first: list[float] = []
        first_intended: list[float] = []
        # Set once publishing is over and every message sent has come back.
        drained = asyncio.Event()
        publishing_over = False

        async def receive() -> None:
            async for message in held.messages():
                if len(message.payload) < _STAMP.size:
                    continue
                (intended,) = _STAMP.unpack_from(message.payload)
                latency = message.received_at - intended
                out.messages_received += 1
                out.delivery_latencies.append(latency)
                if not first:
                    first.append(latency)
                    first_intended.append(intended)
                if publishing_over and out.messages_received >= out.messages_sent:
                    drained.set()

        async def publish() -> None:
            interval = run.publish_interval
            assert interval is not None
            # Spread devices over the interval so that the fleet's rate is even.
            phase = (device.index * 0.618033988749895) % 1.0 * interval
            intended = CLOCK() + phase
            while intended < (run.hold_until or 0.0):
                delay = intended - CLOCK()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Counted when handed to the connection: the deadline may cancel the
                # wait for its PUBACK after the message left, and it still comes back.
                out.messages_sent += 1
                await held.publish(topic, self._payload(intended), qos)
                intended += interval

        receiver: asyncio.Task[None] | None = None
        try:
            try:
                # Everything, the subscription included, ends at the hold deadline.
                async with asyncio.timeout(max(remaining, 0.0)):
                    ack = await held.subscribe(topic, qos)
                    if ack.ok:
                        receiver = loop.create_task(receive())
                    await publish()
                    # Publishing is over; keep receiving until the hold ends.
                    await loop.create_future()
            except TimeoutError:
                pass
            # Messages published just before the deadline are still on their way
            # back: wait for them (bounded), or they would count as lost.
            publishing_over = True
            if receiver is not None and out.messages_received < out.messages_sent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.settings.device_timeout, DRAIN_SECONDS)):
                        await drained.wait()
        finally:
            if receiver is not None:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
        if first:
            out.steps.append(
                RunStep("first_message", first_intended[0] - run.scheduled, first[0], True)
            )


def _connect_steps(marks: Mapping[str, float], scheduled: float) -> list[RunStep]:
    """The tcp, tls and ack steps of a held device from its connection's clock marks."""
    points = ("tcp_start", "tcp_end", "tls_end", "ack_end")
    if not all(p in marks for p in points):
        return []
    t = [marks[p] for p in points]
    return [
        RunStep(name, t[i] - scheduled, max(0.0, t[i + 1] - t[i]), True)
        for i, name in enumerate(("tcp", "tls", "ack"))
    ]


#: The clock of every fleet time (schedule, steps, message stamps): precise and
#: monotonic, shared by the device sessions through their ``clock`` argument.
CLOCK: Callable[[], float] = time.perf_counter

#: The longest a held device waits, after its hold ends, for its own messages to return.
DRAIN_SECONDS = 5.0


def make_runner(settings: RunnerSettings) -> DeviceRunner:
    """The default runner factory: real devices (:class:`DeviceModuleRunner`)."""
    return DeviceModuleRunner(settings)
