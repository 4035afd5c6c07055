"""The fleet report: outcome counts, fidelity per fault kind, and latency histograms.

A :class:`FleetReport` is built incrementally while a fleet runs (one
:meth:`FleetReport.add` per finished device), serialised to JSON, and merged with
the reports of other shards or processes. Every latency lives in an HDR histogram
(the ``hdrh`` package) and is serialised *encoded* in the JSON document, so that
merging shards is exact: the merged percentiles are those of one run over all the
devices, not an average of percentiles.

Latencies are kept in microseconds inside the histograms and reported in
milliseconds. The connect latency of a device is measured from its *scheduled*
start, not from the moment the event loop got round to starting it, so that a
saturated load generator shows up as latency instead of hiding it (no coordinated
omission); ``start_lag`` records the difference separately.

Errors::

    ReportError              a report document is malformed or cannot be merged
                             (names the field and the file); ValueError and
                             binascii/zlib errors from decoding are translated to it
"""

from __future__ import annotations

import binascii
import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram

from devices.protocols.mqtt import CONNACK_NAMES
from devices.selfwatch import (
    BOTTLENECK,
    Sample,
    merge_series,
    series_from_json,
    series_to_json,
)
from edge.mqtt.reasons import reason_name

#: Identifies the JSON layout; bumped on incompatible changes.
SCHEMA = "edgesim.fleet.report/1"

#: Steps of a device's connection whose durations are reported, in order.
STEPS: tuple[str, ...] = ("tcp", "tls", "ack", "first_message")

#: A zero-length step marking the moment a device was acknowledged, for runners
#: whose trace has no separate ``ack`` step (held devices).
CONNECTED_MARK = "connected"

#: The percentiles every latency summary carries (keys are ``p50`` ... ``p99_9``).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
)

_US = 1_000_000
# One hour in microseconds covers any timeout the fleet allows; 3 significant
# digits keep every percentile within 0.1 % of the exact value.
_HIGHEST_US = 3600 * _US
_DIGITS = 3
# Timeline buckets are many; 2 digits (1 %) keeps each one ~30 KiB instead of ~190.
_TIMELINE_DIGITS = 2
_TIMELINE_HIGHEST_US = 600 * _US


class ReportError(Exception):
    """A report document is malformed, or two reports cannot be merged."""


class StepLike(Protocol):
    """One timed step of a device run, as :mod:`devices.device` produces it."""

    @property
    def name(self) -> str: ...
    @property
    def t_start(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def ok(self) -> bool: ...


class ResultLike(Protocol):
    """What the fleet needs from one device's result (``devices.device.DeviceResult``)."""

    @property
    def outcome(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def steps(self) -> Sequence[StepLike]: ...
    @property
    def protocol(self) -> str: ...
    @property
    def messages_sent(self) -> int: ...
    @property
    def messages_received(self) -> int: ...
    @property
    def delivery_latencies(self) -> Sequence[float]: ...


class Latency:
    """An HDR histogram of latencies given in seconds, mergeable and serialisable."""

    __slots__ = ("_digits", "_highest", "hist")

    def __init__(self, *, digits: int = _DIGITS, highest_us: int = _HIGHEST_US) -> None:
        self._digits = digits
        self._highest = highest_us
        self.hist = HdrHistogram(1, highest_us, digits)

    def record(self, seconds: float) -> None:
        """Record one latency; values below 1 us (and clock skew) count as 1 us."""
        value = round(seconds * _US)
        # Values beyond the range are clamped rather than dropped so counts stay exact.
        self.hist.record_value(min(max(value, 1), self._highest))

    @property
    def count(self) -> int:
        """How many latencies were recorded."""
        return int(self.hist.get_total_count())

    def merge(self, other: Latency) -> None:
        """Add every value recorded in ``other`` to this histogram."""
        self.hist.add(other.hist)

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form."""
        return bytes(self.hist.encode()).decode("ascii")

    @classmethod
    def decode(
        cls, text: str, *, where: str, digits: int = _DIGITS, highest_us: int = _HIGHEST_US
    ) -> Latency:
        """Rebuild a histogram from :meth:`encode` output; ``where`` names it in errors."""
        latency = cls(digits=digits, highest_us=highest_us)
        try:
            latency.hist.decode_and_add(text.encode("ascii"))
        except (ValueError, TypeError, UnicodeError, binascii.Error, zlib.error) as exc:
            raise ReportError(f"{where}: not an encoded HDR histogram ({exc})") from exc
        return latency

    def summary(self) -> dict[str, Any]:
        """Count, mean, percentiles and max, in milliseconds (None when empty)."""
        out: dict[str, Any] = {"count": self.count}
        if self.count == 0:
            for key, _ in PERCENTILES:
                out[key + "_ms"] = None
            out["max_ms"] = None
            out["mean_ms"] = None
            return out
        # One pass for all percentiles: hdrh's per-call lookups each walk every bucket.
        values = self.hist.get_percentile_to_value_dict([pct for _, pct in PERCENTILES])
        for key, pct in PERCENTILES:
            out[key + "_ms"] = _ms(values[pct])
        out["max_ms"] = _ms(self.hist.get_max_value())
        out["mean_ms"] = round(self._mean_us() / 1000, 3)
        return out

    def _mean_us(self) -> float:
        # hdrh's get_mean_value walks an iterator object per bucket (~80 ms for a
        # 3-digit histogram); scanning the counts array directly is ~10x faster and
        # uses the same value per bucket (the middle of its range).
        hist = self.hist
        total = 0.0
        for index, n in enumerate(hist.counts):
            if n:
                low = hist.get_value_from_index(index)
                high = hist.get_highest_equivalent_value(low)
                total += n * (low + high) / 2
        return total / self.count

    def to_json(self) -> dict[str, Any]:
        """The summary plus the encoded histogram (``hdr``) that merging needs."""
        return {**self.summary(), "hdr": self.encode()}


def _ms(value_us: float) -> float:
    return round(float(value_us) / 1000, 3)


def _timeline_latency() -> Latency:
    return Latency(digits=_TIMELINE_DIGITS, highest_us=_TIMELINE_HIGHEST_US)


@dataclass(slots=True)
class Bucket:
    """One second of the arrival schedule: outcomes and connect latencies."""

    outcomes: dict[str, int] = field(default_factory=dict)
    connect: Latency = field(default_factory=_timeline_latency)


@dataclass(slots=True)
class Fidelity:
    """How the devices injected with one fault kind (or healthy ones) fared.

    ``expected`` lists the acceptable results: ``"connected"`` for healthy devices,
    otherwise TLS alert names. ``mismatches`` keeps the first few offenders.
    """

    expected: tuple[str, ...]
    devices: int = 0
    matched: int = 0
    got: dict[str, int] = field(default_factory=dict)
    mismatches: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every device of this kind ended as expected."""
        return self.matched == self.devices


#: How many mismatching devices a report names per kind (the counts stay exact).
MAX_MISMATCHES = 20


def result_key(outcome: str, reason: str) -> str:
    """The single word a device's result is compared and counted by."""
    return "connected" if outcome == "connected" else (reason or outcome)


# The MQTT reasons that carry a code: ``connack-0x87``, ``dropped:disconnect-0x8e``,
# ``connack-5`` (3.1.1), ``mqtt-0x94`` (a DISCONNECT the device sent).
_CODED = re.compile(
    r"^(?:dropped:)?(connack|suback|puback|pubrec|pubcomp|unsuback|disconnect|mqtt)"
    r"-(0x[0-9a-f]{2}|[0-9])$"
)
_PACKET_TYPES = {
    "connack": 2,
    "puback": 4,
    "pubrec": 5,
    "pubcomp": 7,
    "suback": 9,
    "unsuback": 11,
    "disconnect": 14,
    "mqtt": 14,
}


def reason_code_label(outcome: str, reason: str, protocol: str) -> str | None:
    """The MQTT packet and reason code behind a result, e.g. ``"PUBACK 0x87 Not authorized"``.

    A connected MQTT device counts its CONNACK (``"CONNACK 0x00 Success"`` under
    MQTT 5, ``"CONNACK 0 accepted"`` under 3.1.1); other results count when their
    reason names a code. ``None`` when there is no code to count (a TLS alert, HTTP).
    """
    if outcome == "connected":
        if protocol.endswith("mqtt5"):
            return "CONNACK 0x00 Success"
        return "CONNACK 0 accepted" if protocol == "mqtt" else None
    m = _CODED.match(reason)
    if m is None:
        return None
    word, code_text = m.group(1), m.group(2)
    if not code_text.startswith("0x"):
        code = int(code_text)
        return f"CONNACK {code} {CONNACK_NAMES.get(code, 'unknown code')}"
    code = int(code_text, 16)
    if word == "suback" and code == 0x80 and not protocol.endswith("mqtt5"):
        return "SUBACK 0x80 Failure"  # the one 3.1.1 refusal code of SUBACK
    name = reason_name(code, _PACKET_TYPES[word])
    if word == "mqtt":
        return f"DISCONNECT {code:#04x} {name} (sent by the device)"
    return f"{word.upper()} {code:#04x} {name}"


def _latency(table: dict[str, Latency], key: str) -> Latency:
    """``table[key]``, created on first use.

    Not ``setdefault(key, Latency())``: that builds (and drops) a whole HDR
    histogram's counts array on every call, which was most of the report's cost per
    device and a steady churn of large allocations.
    """
    found = table.get(key)
    if found is None:
        found = table[key] = Latency()
    return found


@dataclass(slots=True)
class FleetReport:
    """Everything measured about a fleet run, mergeable across shards."""

    devices: int = 0
    shards: list[str] = field(default_factory=list)
    started: str = ""
    duration_s: float = 0.0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Per outcome, the MQTT packet and reason code behind it (see
    #: :func:`reason_code_label`): ``{"refused": {"CONNACK 0x87 Not authorized": 3}}``.
    reason_codes: dict[str, dict[str, int]] = field(default_factory=dict)
    protocols: dict[str, dict[str, int]] = field(default_factory=dict)
    protocol_connect: dict[str, Latency] = field(default_factory=dict)
    steps: dict[str, Latency] = field(default_factory=dict)
    connect: Latency = field(default_factory=Latency)
    start_lag: Latency = field(default_factory=Latency)
    delivery: Latency = field(default_factory=Latency)
    messages_sent: int = 0
    messages_received: int = 0
    fidelity: dict[str, Fidelity] = field(default_factory=dict)
    timeline: dict[int, Bucket] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Per second of the run: connects, messages, errors, fleet CPU and loop lag.
    series: dict[int, Sample] = field(default_factory=dict)
    #: CPU seconds the fleet process(es) spent, summed over shards.
    fleet_cpu_s: float = 0.0
    #: The worst event-loop lag any fleet process saw, in seconds.
    loop_lag_max_s: float = 0.0
    #: How the fleet's OpenSSL handled EC/RSA keys (``devices.legacykeys``), in words.
    tls_keys: str = ""
    #: Edge chains verified in full by the fleet, and verifications reused for the
    #: same chain and host name (``devices.verifycache``; both 0 when it was off).
    chains_verified: int = 0
    chains_reused: int = 0

    # -- building -------------------------------------------------------

    def add(
        self,
        *,
        device_id: str,
        fault: str | None,
        expected: Sequence[str],
        offset: float,
        start_lag: float,
        result: ResultLike,
    ) -> None:
        """Account for one finished device.

        ``offset`` is its scheduled start in seconds after the fleet's start (the
        timeline's x axis); ``start_lag`` how late the generator actually started it.
        The result's step times count from the device's *scheduled* start, so the end
        of its ``connected`` marker (or else of its ``ack`` step) is its connect
        latency, start lag included. That latency is recorded whenever the device got
        that far, even if it failed later (dropped while held).
        """
        self.devices += 1
        key = result_key(result.outcome, result.reason)
        reason = result.reason or result.outcome
        by_reason = self.outcomes.setdefault(result.outcome, {})
        by_reason[reason] = by_reason.get(reason, 0) + 1
        proto = result.protocol or "unknown"
        label = reason_code_label(result.outcome, result.reason, proto)
        if label is not None:
            by_code = self.reason_codes.setdefault(result.outcome, {})
            by_code[label] = by_code.get(label, 0) + 1
        pcounts = self.protocols.setdefault(proto, {"devices": 0})
        pcounts["devices"] += 1
        pcounts[result.outcome] = pcounts.get(result.outcome, 0) + 1
        self.start_lag.record(start_lag)

        connected_at: float | None = None
        for step in result.steps:
            if step.name in STEPS and step.ok:
                _latency(self.steps, step.name).record(step.duration)
            if step.name == CONNECTED_MARK or (
                step.name == "ack" and step.ok and connected_at is None
            ):
                connected_at = step.t_start + step.duration
        second = int(offset)
        bucket = self.timeline.get(second)
        if bucket is None:
            bucket = self.timeline[second] = Bucket()
        bucket.outcomes[result.outcome] = bucket.outcomes.get(result.outcome, 0) + 1
        if connected_at is not None:
            self.connect.record(connected_at)
            _latency(self.protocol_connect, proto).record(connected_at)
            bucket.connect.record(connected_at)

        self.messages_sent += result.messages_sent
        self.messages_received += result.messages_received
        for seconds in result.delivery_latencies:
            self.delivery.record(seconds)

        kind = fault or "none"
        fid = self.fidelity.get(kind)
        if fid is None:
            fid = self.fidelity[kind] = Fidelity(expected=tuple(expected))
        fid.devices += 1
        fid.got[key] = fid.got.get(key, 0) + 1
        if key in fid.expected:
            fid.matched += 1
        elif len(fid.mismatches) < MAX_MISMATCHES:
            fid.mismatches.append(
                {"id": device_id, "outcome": result.outcome, "reason": result.reason}
            )

    def note(self, text: str) -> None:
        """Attach a remark (for example: the CRL was not installed) once."""
        if text not in self.notes:
            self.notes.append(text)

    # -- verdict ---------------------------------------------------------

    @property
    def ok(self) -> bool:
        """True when every device, faulty or healthy, ended as expected."""
        return all(f.ok for f in self.fidelity.values())

    def count(self, outcome: str, reason: str | None = None) -> int:
        """How many devices ended with ``outcome`` (and ``reason``, if given)."""
        by_reason = self.outcomes.get(outcome, {})
        return by_reason.get(reason, 0) if reason is not None else sum(by_reason.values())

    # -- merging ---------------------------------------------------------

    def merge(self, other: FleetReport) -> None:
        """Fold ``other`` (another shard of the same fleet) into this report."""
        for kind, theirs in other.fidelity.items():
            mine = self.fidelity.get(kind)
            if mine is not None and set(mine.expected) != set(theirs.expected):
                raise ReportError(
                    f"fidelity.{kind}: shards expect different results "
                    f"({sorted(mine.expected)} vs {sorted(theirs.expected)})"
                )
        overlap = set(self.shards) & set(other.shards)
        if overlap:
            raise ReportError(f"shards: {', '.join(sorted(overlap))} would be counted twice")
        self.devices += other.devices
        self.shards.extend(other.shards)
        if other.started and (not self.started or other.started < self.started):
            self.started = other.started
        self.duration_s = max(self.duration_s, other.duration_s)
        for outcome, reasons in other.outcomes.items():
            _add_counts(self.outcomes.setdefault(outcome, {}), reasons)
        for outcome, codes in other.reason_codes.items():
            _add_counts(self.reason_codes.setdefault(outcome, {}), codes)
        for proto, counts in other.protocols.items():
            _add_counts(self.protocols.setdefault(proto, {}), counts)
        for proto, lat in other.protocol_connect.items():
            _latency(self.protocol_connect, proto).merge(lat)
        for step, lat in other.steps.items():
            _latency(self.steps, step).merge(lat)
        self.connect.merge(other.connect)
        self.start_lag.merge(other.start_lag)
        self.delivery.merge(other.delivery)
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received
        for kind, theirs in other.fidelity.items():
            mine = self.fidelity.setdefault(kind, Fidelity(expected=theirs.expected))
            mine.devices += theirs.devices
            mine.matched += theirs.matched
            _add_counts(mine.got, theirs.got)
            room = MAX_MISMATCHES - len(mine.mismatches)
            mine.mismatches.extend(theirs.mismatches[: max(room, 0)])
        for second, theirs_b in other.timeline.items():
            mine_b = self.timeline.get(second)
            if mine_b is None:
                mine_b = self.timeline[second] = Bucket()
            _add_counts(mine_b.outcomes, theirs_b.outcomes)
            mine_b.connect.merge(theirs_b.connect)
        for text in other.notes:
            self.note(text)
        merge_series(self.series, other.series)
        self.fleet_cpu_s += other.fleet_cpu_s
        self.loop_lag_max_s = max(self.loop_lag_max_s, other.loop_lag_max_s)
        self.chains_verified += other.chains_verified
        self.chains_reused += other.chains_reused
        if other.tls_keys and other.tls_keys not in self.tls_keys.split("; "):
            self.tls_keys = "; ".join(filter(None, [self.tls_keys, other.tls_keys]))

    # -- serialisation ---------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-safe document (histograms encoded inside)."""
        by_protocol: dict[str, Any] = {}
        for proto in sorted(self.protocols):
            entry: dict[str, Any] = dict(self.protocols[proto])
            entry["connect"] = self.protocol_connect.get(proto, Latency()).to_json()
            by_protocol[proto] = entry
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "devices": self.devices,
            "shards": sorted(self.shards),
            "started": self.started,
            "duration_s": round(self.duration_s, 3),
            "outcomes": {k: dict(sorted(v.items())) for k, v in sorted(self.outcomes.items())},
            "reason_codes": {
                k: dict(sorted(v.items())) for k, v in sorted(self.reason_codes.items())
            },
            "fidelity": {
                kind: {
                    "ok": f.ok,
                    "expected": list(f.expected),
                    "devices": f.devices,
                    "matched": f.matched,
                    "got": dict(sorted(f.got.items())),
                    "mismatches": f.mismatches,
                }
                for kind, f in sorted(self.fidelity.items())
            },
            "latency": {
                "connect": self.connect.to_json(),
                "start_lag": self.start_lag.to_json(),
                "steps": {s: self.steps[s].to_json() for s in STEPS if s in self.steps},
            },
            "protocols": by_protocol,
            "messages": {
                "sent": self.messages_sent,
                "received": self.messages_received,
                "delivery": self.delivery.to_json(),
            },
            "timeline": [
                {
                    "t": second,
                    "outcomes": dict(sorted(b.outcomes.items())),
                    "connect": b.connect.to_json(),
                }
                for second, b in sorted(self.timeline.items())
            ],
            "notes": list(self.notes),
            "generator": self.generator(),
            "series": series_to_json(self.series),
        }

    def generator(self) -> dict[str, Any]:
        """The fleet's own cost: CPU per connect and loop lag (so a slow generator shows)."""
        connected = self.count("connected")
        return {
            "cpu_s": round(self.fleet_cpu_s, 3),
            "cpu_ms_per_connect": (
                round(self.fleet_cpu_s / connected * 1000, 3) if connected else None
            ),
            "loop_lag_max_ms": round(self.loop_lag_max_s * 1000, 2),
            "behind": BOTTLENECK in self.notes,
            "tls_keys": self.tls_keys,
            "chains_verified": self.chains_verified,
            "chains_reused": self.chains_reused,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, source: str = "report") -> FleetReport:
        """Rebuild a report from :meth:`to_json` output; errors name ``source`` and the field."""
        r = _Reader(doc, source)
        if r.get("schema", str) != SCHEMA:
            raise ReportError(f"{source}: schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
        report = cls(
            devices=r.get("devices", int),
            shards=[str(s) for s in r.get("shards", list)],
            started=r.get("started", str),
            duration_s=float(r.get("duration_s", (int, float))),
            messages_sent=r.sub("messages").get("sent", int),
            messages_received=r.sub("messages").get("received", int),
            notes=[str(n) for n in r.get("notes", list)],
        )
        report.outcomes = {
            outcome: _counts(reasons, f"{source}: outcomes.{outcome}")
            for outcome, reasons in r.get("outcomes", dict).items()
        }
        # Absent from reports written before MQTT 5 devices existed: nothing to count.
        report.reason_codes = {
            outcome: _counts(codes, f"{source}: reason_codes.{outcome}")
            for outcome, codes in r.get("reason_codes", dict, {}).items()
        }
        lat = r.sub("latency")
        report.connect = lat.latency("connect")
        report.start_lag = lat.latency("start_lag")
        steps = lat.sub("steps")
        report.steps = {name: steps.latency(name) for name in steps.doc}
        report.delivery = r.sub("messages").latency("delivery")
        for proto, entry_doc in r.get("protocols", dict).items():
            entry = _Reader(entry_doc, f"{source}: protocols.{proto}")
            report.protocols[proto] = _counts(
                {k: v for k, v in entry.doc.items() if k != "connect"}, entry.where
            )
            report.protocol_connect[proto] = entry.latency("connect")
        for kind, f_doc in r.get("fidelity", dict).items():
            f = _Reader(f_doc, f"{source}: fidelity.{kind}")
            report.fidelity[kind] = Fidelity(
                expected=tuple(str(e) for e in f.get("expected", list)),
                devices=f.get("devices", int),
                matched=f.get("matched", int),
                got=_counts(f.get("got", dict), f.where + ".got"),
                mismatches=[
                    {str(k): str(v) for k, v in m.items()} for m in f.get("mismatches", list)
                ],
            )
        # Absent from reports written before the fleet watched itself.
        generator = r.get("generator", dict, {})
        report.fleet_cpu_s = float(generator.get("cpu_s", 0.0))
        report.loop_lag_max_s = float(generator.get("loop_lag_max_ms", 0.0)) / 1000
        report.tls_keys = str(generator.get("tls_keys", ""))
        report.chains_verified = int(generator.get("chains_verified", 0))
        report.chains_reused = int(generator.get("chains_reused", 0))
        try:
            report.series = series_from_json(r.get("series", list, []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{source}: series: {exc!r}") from exc
        for i, b_doc in enumerate(r.get("timeline", list)):
            b = _Reader(b_doc, f"{source}: timeline[{i}]")
            connect = b.sub("connect")
            report.timeline[b.get("t", int)] = Bucket(
                outcomes=_counts(b.get("outcomes", dict), b.where + ".outcomes"),
                connect=Latency.decode(
                    connect.get("hdr", str),
                    where=connect.where + ".hdr",
                    digits=_TIMELINE_DIGITS,
                    highest_us=_TIMELINE_HIGHEST_US,
                ),
            )
        return report


def _add_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value


def _counts(doc: object, where: str) -> dict[str, int]:
    if not isinstance(doc, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in doc.values()
    ):
        raise ReportError(f"{where}: expected an object of counts")
    return {str(k): int(v) for k, v in doc.items()}


class _Reader:
    """Typed access to one object of a report document, with located errors."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise ReportError(f"{where}: expected an object, got {type(doc).__name__}")
        self.doc: dict[str, Any] = doc
        self.where = where

    def get(self, key: str, kind: type[Any] | tuple[type[Any], ...], default: Any = None) -> Any:
        if key not in self.doc:
            if default is not None:
                return default
            raise ReportError(f"{self.where}: missing field {key!r}")
        value = self.doc[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReportError(f"{self.where}: field {key!r} has the wrong type")
        return value

    def sub(self, key: str) -> _Reader:
        sep = "." if ":" in self.where else ": "
        return _Reader(self.get(key, dict), f"{self.where}{sep}{key}")

    def latency(self, key: str) -> Latency:
        entry = self.sub(key)
        return Latency.decode(entry.get("hdr", str), where=entry.where + ".hdr")


def load_report(path: Path) -> FleetReport:
    """Read a report file written by ``edgesim fleet run --report``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from exc
    return FleetReport.from_json(doc, source=str(path))


def merge_reports(reports: Iterable[FleetReport]) -> FleetReport:
    """Merge shard reports into one (the first report's order of notes is kept)."""
    merged = FleetReport()
    for report in reports:
        merged.merge(report)
    return merged


def summary_table(doc: Mapping[str, Any]) -> str:
    """A short plain-text summary of a report document (as :meth:`FleetReport.to_json`)."""
    lines = [
        f"devices {doc['devices']}  shards {','.join(doc['shards']) or '-'}  "
        f"duration {doc['duration_s']:.1f}s  result {'OK' if doc['ok'] else 'FAILED'}",
        "",
        f"{'outcome':<12} {'reason':<28} {'devices':>8}",
    ]
    for outcome, reasons in doc["outcomes"].items():
        for reason, n in reasons.items():
            lines.append(f"{outcome:<12} {reason:<28} {n:>8}")
    codes = doc.get("reason_codes") or {}
    if codes:
        lines += ["", f"{'outcome':<12} {'MQTT reason code':<40} {'devices':>8}"]
        for outcome, by_code in codes.items():
            for label, n in by_code.items():
                lines.append(f"{outcome:<12} {label:<40} {n:>8}")
    lines += ["", f"{'fault':<12} {'expected':<40} {'devices':>8} {'matched':>8}  verdict"]
    for kind, f in doc["fidelity"].items():
        verdict = "ok" if f["ok"] else "FAIL " + _got_text(f["got"], f["expected"])
        lines.append(
            f"{kind:<12} {'|'.join(f['expected']):<40} {f['devices']:>8} {f['matched']:>8}  {verdict}"
        )
    lines += [
        "",
        f"{'latency (ms)':<22} {'count':>7} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9}",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = [
        ("connect (from sched.)", doc["latency"]["connect"])
    ]
    rows += [(f"  step {s}", v) for s, v in doc["latency"]["steps"].items()]
    rows += [(f"  proto {p}", v["connect"]) for p, v in doc["protocols"].items()]
    rows += [("start lag", doc["latency"]["start_lag"])]
    rows += [("delivery", doc["messages"]["delivery"])]
    for label, s in rows:
        lines.append(
            f"{label:<22} {s['count']:>7} "
            + " ".join(_fmt(s[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"))
        )
    msgs = doc["messages"]
    lines.append("")
    lines.append(f"messages sent {msgs['sent']}  received {msgs['received']}")
    gen = doc.get("generator")
    if gen:
        # The generator's own cost, so that a slow generator is not read as a slow edge.
        per = gen["cpu_ms_per_connect"]
        lines.append(
            f"fleet CPU {gen['cpu_s']:.2f} s"
            + (f" ({per:.2f} ms per connect)" if per is not None else "")
            + f"  worst loop lag {gen['loop_lag_max_ms']:.1f} ms"
            + (f"  keys: {gen['tls_keys']}" if gen.get("tls_keys") else "")
            + (
                f"  edge chain verified {gen['chains_verified']}x, reused {gen['chains_reused']}x"
                if gen.get("chains_reused")
                else ""
            )
        )
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def _got_text(got: Mapping[str, int], expected: Sequence[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in got.items() if k not in expected)


def _fmt(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.2f}"
