"""Mosquitto's MQTT 3.1/3.1.1 packet-sequence cases, run against the edge's broker.

The data lives beside the checkout (``../shared/conformance/mqtt-sequences``; see its
README for the format) and is never copied here. The runner below is written from
that description and drives:

- every 3.1/3.1.1 case fully sans-I/O, with :class:`MqttConnection` objects and a
  fake clock, a fresh broker per case (the main suite; fast);
- every case again over real loopback TCP through :class:`MqttServerProtocol`,
  against one broker shared by all cases (under a second: our broker closes at once
  where the data expects a disconnect);
- a sample against a real Mosquitto, to validate the runner itself (interop; a
  sample because Mosquitto leaves some connections open until the runner's timeout).

``known_failures.txt`` lists the cases the broker still fails, each with why. A
listed case that passes, or an unlisted case that fails, fails the test, so the
list stays honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.core.events import EventLog
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.session import DeviceIdentity, SessionInfo
from edge.mqtt.broker import MqttBroker, MqttConfig, MqttConnection
from edge.mqtt.protocol import MqttServerProtocol

DATA = Path(__file__).parents[2] / ".." / "shared" / "conformance" / "mqtt-sequences"
KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")
#: Mosquitto 2.0's score on these cases (271 of 314 for 2.0.11 with this runner);
#: the broker must do at least as well.
MOSQUITTO_PASSES = 271
#: How long a socket run waits for an expected packet or for the broker to close.
SOCKET_WAIT = 2.0

SESSION = SessionInfo(identity=DeviceIdentity(namespace="conformance", name="client"), peer="test")


# --- the data ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One test of the data set, with the group's defaults applied."""

    case_id: str
    group: str
    name: str
    ver: int
    connect: bool
    expect_disconnect: bool
    msgs: tuple[dict[str, Any], ...]


def _norm(text: str) -> str:
    return " ".join(text.split())


def load_cases(directory: Path = DATA, versions: tuple[int, ...] = (3, 4)) -> list[Case]:
    """Every enabled case of the given protocol levels (default 3.1/3.1.1), in file order."""
    cases: list[Case] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.json")):
        for group in json.loads(path.read_text()):
            if group.get("disable"):
                continue
            for test in group["tests"]:
                ver = test.get("ver", group.get("ver", 4))
                if ver not in versions:
                    continue
                case_id = f"{path.stem}: {_norm(group['group'])}: {_norm(test['name'])}"
                base, n = case_id, 2
                while case_id in seen:  # names differing only in whitespace
                    case_id = f"{base} #{n}"
                    n += 1
                seen.add(case_id)
                cases.append(
                    Case(
                        case_id=case_id,
                        group=group["group"],
                        name=test["name"],
                        ver=ver,
                        connect=test.get("connect", group.get("connect", True)),
                        expect_disconnect=test.get(
                            "expect_disconnect", group.get("expect_disconnect", True)
                        ),
                        msgs=tuple(test["msgs"]),
                    )
                )
    return cases


_TOKEN = re.compile(r"'([^']*)'|(\S+)")


def _varint(value: int) -> bytes:
    # No upper bound on purpose: the data encodes 2^28 to get a 5-byte length.
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def parse_payload(text: str) -> bytes:
    """Turn the README's token list into bytes."""
    out = bytearray()
    for match in _TOKEN.finditer(text):
        quoted, token = match.groups()
        if quoted is not None:
            out += quoted.encode("utf-8")
            continue
        kind, rest = token[0], token[1:]
        if kind in "rv" and rest.isdigit():
            out += _varint(int(rest))
        elif kind in "skmH" and rest.isdigit():
            out += int(rest).to_bytes(2, "big")
        elif kind == "i" and rest.isdigit():
            out += int(rest).to_bytes(1, "big")
        elif kind == "L" and rest.isdigit():
            out += int(rest).to_bytes(4, "big")
        else:
            out += bytes.fromhex(token)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def default_connect(client_id: str, ver: int) -> bytes:
    """The runner's CONNECT: clean session, keepalive 60, ``MQIsdp``/3 or ``MQTT``/4."""
    name = "MQIsdp" if ver == 3 else "MQTT"
    body = _string(name) + bytes((ver, 0x02)) + (60).to_bytes(2, "big") + _string(client_id)
    return b"\x10" + _varint(len(body)) + body


def default_connect5(client_id: str) -> bytes:
    """The runner's MQTT 5 CONNECT: clean start, keepalive 60, Receive Maximum 20."""
    props = b"\x03\x21\x00\x14"
    body = _string("MQTT") + b"\x05\x02" + (60).to_bytes(2, "big") + props + _string(client_id)
    return b"\x10" + _varint(len(body)) + body


def _connack_code(data: bytes) -> tuple[int, int] | None:
    """(packet length, reason code) of a CONNACK at the start of ``data``; None if short."""
    if len(data) < 2:
        return None
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(data):
            return None
        byte = data[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    if len(data) < i + length or length < 2 or data[0] != 0x20:
        return None
    return i + length, data[i + 1]


def _publish(topic: str, payload: bytes, qos: int, retain: bool, pid: int) -> bytes:
    body = _string(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return bytes((0x30 | qos << 1 | int(retain),)) + _varint(len(body)) + body


def _subscribe(topic: str, qos: int) -> bytes:
    body = b"\x00\x01" + _string(topic) + bytes((qos,))
    return b"\x82" + _varint(len(body)) + body


def _unsubscribe(topic: str) -> bytes:
    body = b"\x00\x01" + _string(topic)
    return b"\xa2" + _varint(len(body)) + body


CONNACK_OK = b"\x20\x02\x00\x00"
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


# --- the sans-I/O driver ---------------------------------------------------------------


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CaseFailed(Exception):
    """A case did not behave as the data expects; the message says where."""


class SansIoClient:
    """One client driving an :class:`MqttConnection` directly."""

    def __init__(self, broker: MqttBroker) -> None:
        self.conn: MqttConnection = broker.connection(SESSION)
        self.pending = bytearray()

    def send(self, data: bytes) -> None:
        # Like a socket, sending to a closed connection is not itself an error.
        self.conn.receive_data(data)

    def recv(self, expected: bytes, where: str) -> None:
        self.pending += self.conn.data_to_send()
        got = bytes(self.pending[: len(expected)])
        if got != expected:
            state = f" (closed: {self.conn.close_reason})" if self.conn.should_close else ""
            raise CaseFailed(f"{where}: expected {expected.hex(' ')}, got {got.hex(' ')}{state}")
        del self.pending[: len(expected)]


def _external_sansio(broker: MqttBroker, msg: dict[str, Any]) -> None:
    client = SansIoClient(broker)
    client.send(default_connect("external-publisher", 4))
    client.recv(CONNACK_OK, "external CONNACK")
    qos = int(msg.get("qos", 0))
    client.send(_publish(msg["topic"], msg["payload"].encode(), qos, bool(msg.get("retain")), 1))
    if qos == 1:
        client.recv(b"\x40\x02\x00\x01", "external PUBACK")
    elif qos == 2:
        client.recv(b"\x50\x02\x00\x01", "external PUBREC")
        client.send(b"\x62\x02\x00\x01")
        client.recv(b"\x70\x02\x00\x01", "external PUBCOMP")
    client.send(b"\xe0\x00")
    client.conn.connection_lost()


def run_sansio(case: Case, config: MqttConfig | None = None) -> None:
    """Run one case (any level) against a fresh broker; raise :class:`CaseFailed` on a mismatch."""
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    broker = MqttBroker(core, config or MqttConfig(), clock=FakeClock())
    client = SansIoClient(broker)
    try:
        if case.connect and case.ver == 5:
            # Any accepting CONNACK: its properties depend on the configuration.
            client.send(default_connect5(f"{case.group} {case.name}"))
            client.pending += client.conn.data_to_send()
            found = _connack_code(bytes(client.pending))
            if found is None or found[1] != 0:
                raise CaseFailed(f"default CONNECT: got {bytes(client.pending).hex(' ')}")
            del client.pending[: found[0]]
        elif case.connect:
            client.send(default_connect(f"{case.group} {case.name}", case.ver))
            client.recv(CONNACK_OK, "default CONNECT")
        for i, msg in enumerate(case.msgs):
            where = f"msg {i} ({msg['type']})"
            kind = msg["type"]
            if kind == "send":
                client.send(parse_payload(msg["payload"]))
            elif kind == "recv":
                client.recv(parse_payload(msg["payload"]), where)
            elif kind == "external_publish":
                _external_sansio(broker, msg)
            elif kind == "subscribe" and case.ver != 5:
                client.send(_subscribe(msg["topic"], int(msg["qos"])))
                client.recv(bytes((0x90, 3, 0, 1, int(msg["qos"]))), where)
            elif kind == "unsubscribe" and case.ver != 5:
                client.send(_unsubscribe(msg["topic"]))
                client.recv(b"\xb0\x02\x00\x01", where)
            else:
                raise CaseFailed(f"{where}: unknown message type {kind!r}")
        if case.expect_disconnect:
            if not client.conn.should_close:
                raise CaseFailed("expected the broker to disconnect; the connection is open")
        else:
            if client.conn.should_close:
                raise CaseFailed(f"unexpected disconnect: {client.conn.close_reason}")
            client.send(PINGREQ)
            client.recv(PINGRESP, "final PINGREQ")
    finally:
        client.conn.connection_lost()


# --- the socket driver -----------------------------------------------------------------


async def _read(reader: asyncio.StreamReader, expected: bytes, where: str) -> None:
    try:
        async with asyncio.timeout(SOCKET_WAIT):
            got = await reader.readexactly(len(expected))
    except asyncio.IncompleteReadError as exc:
        raise CaseFailed(f"{where}: connection closed after {exc.partial.hex(' ')!r}") from None
    except TimeoutError:
        raise CaseFailed(f"{where}: nothing within {SOCKET_WAIT} s") from None
    except ConnectionError as exc:
        raise CaseFailed(f"{where}: {exc}") from None
    if got != expected:
        raise CaseFailed(f"{where}: expected {expected.hex(' ')}, got {got.hex(' ')}")


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _external_socket(port: int, msg: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _send(writer, default_connect("external-publisher", 4))
        await _read(reader, CONNACK_OK, "external CONNACK")
        qos = int(msg.get("qos", 0))
        await _send(
            writer, _publish(msg["topic"], msg["payload"].encode(), qos, bool(msg.get("retain")), 1)
        )
        if qos == 1:
            await _read(reader, b"\x40\x02\x00\x01", "external PUBACK")
        elif qos == 2:
            await _read(reader, b"\x50\x02\x00\x01", "external PUBREC")
            await _send(writer, b"\x62\x02\x00\x01")
            await _read(reader, b"\x70\x02\x00\x01", "external PUBCOMP")
        await _send(writer, b"\xe0\x00")
    finally:
        await _close(writer)


async def run_socket(case: Case, port: int) -> None:
    """Run one case (any level) against a broker listening on 127.0.0.1:``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if case.connect and case.ver == 5:
            await _send(writer, default_connect5(f"{case.group} {case.name}"))
            head = b""
            try:
                async with asyncio.timeout(SOCKET_WAIT):
                    while _connack_code(head) is None:
                        chunk = await reader.read(1)
                        if not chunk:
                            break
                        head += chunk
            except TimeoutError:
                pass
            found = _connack_code(head)
            if found is None or found[1] != 0:
                raise CaseFailed(f"default CONNECT: got {head.hex(' ')}")
        elif case.connect:
            await _send(writer, default_connect(f"{case.group} {case.name}", case.ver))
            await _read(reader, CONNACK_OK, "default CONNECT")
        for i, msg in enumerate(case.msgs):
            where = f"msg {i} ({msg['type']})"
            kind = msg["type"]
            if kind == "send":
                await _send(writer, parse_payload(msg["payload"]))
            elif kind == "recv":
                await _read(reader, parse_payload(msg["payload"]), where)
            elif kind == "external_publish":
                await _external_socket(port, msg)
            elif kind == "subscribe" and case.ver != 5:
                await _send(writer, _subscribe(msg["topic"], int(msg["qos"])))
                await _read(reader, bytes((0x90, 3, 0, 1, int(msg["qos"]))), where)
            elif kind == "unsubscribe" and case.ver != 5:
                await _send(writer, _unsubscribe(msg["topic"]))
                await _read(reader, b"\xb0\x02\x00\x01", where)
            else:
                raise CaseFailed(f"{where}: unknown message type {kind!r}")
        if case.expect_disconnect:
            try:
                async with asyncio.timeout(SOCKET_WAIT):
                    while await reader.read(4096):
                        pass
            except TimeoutError:
                raise CaseFailed("expected the broker to disconnect; still open") from None
            except ConnectionError:
                pass  # a reset is a disconnect too
        else:
            await _send(writer, PINGREQ)
            await _read(reader, PINGRESP, "final PINGREQ")
    finally:
        await _close(writer)


# --- bookkeeping -----------------------------------------------------------------------


def load_known_failures() -> dict[str, str]:
    """``case id -> why`` from ``known_failures.txt`` (``id<TAB>why`` lines, ``#`` comments)."""
    known: dict[str, str] = {}
    for n, line in enumerate(KNOWN_FAILURES.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        case_id, sep, why = line.partition("\t")
        if not sep or not why.strip():
            raise ValueError(f"{KNOWN_FAILURES.name}:{n}: expected 'case id<TAB>why'")
        known[case_id] = why.strip()
    return known


def _summary(label: str, results: dict[str, str | None]) -> tuple[int, dict[str, str]]:
    failed = {cid: why for cid, why in results.items() if why is not None}
    passed = len(results) - len(failed)
    print(f"\n{label}: {passed} passed, {len(failed)} failed of {len(results)}")
    for cid, why in failed.items():
        print(f"  FAIL {cid}: {why}")
    return passed, failed


CASES = load_cases() if DATA.is_dir() else []
#: A sample for the Mosquitto run: one or two cases of every file, both outcomes.
SAMPLE_IDS = [
    "CONNECT: v3.1 CONNECT: 10 ok",
    "CONNECT: v3.1.1 CONNECT: 10 proto ver 2 [MQTT-3.1.2-2]",
    "CONNECT: v3.1.1 CONNECT: 10 Will flag 1 ok",
    "CONNECT: v3.1.1 CONNECT: 10 Client ID with U+0001",
    "CONNACK: v3.1.1 CONNACK: 20",
    "DISCONNECT: v3.1.1 DISCONNECT: E0 valid",
    "FLOW: v3.1.1 FLOW: QoS 1 receive ok",
    "FLOW: v3.1.1 FLOW: QoS 2 receive ok",
    "FLOW: v3.1.1 FLOW: QoS 2 PUBLISH-PUBACK",
    "FORBIDDEN: v3.1.1 FORBIDDEN: 00",
    "OTHER: v3.1.1 OTHER: subpub self publish qos2",
    "OTHER: v3.1.1 OTHER: subpub retain as normal qos1",
    "PINGREQ: v3.1.1 PINGREQ: C0 valid",
    "PUBLISH: v3.1.1 PUBLISH: 34 QoS 2 Dup 0",
    "PUBLISH: v3.1.1 PUBLISH: 30 remaining length 5 bytes",
    "PUBREC: v3.1.1 PUBREC: 50 unsolicited",
    "PUBREL: v3.1.1 PUBREL: 62 unsolicited",
    "REGRESSION: REGRESSIONS: subscribe-unsubscribe-crash part 1",
    "SUBSCRIBE: v3.1.1 SUBSCRIBE: 82 multiple ok [MQTT-3.8.4-4]",
    "SUBSCRIBE: v3.1.1 SUBSCRIBE: 82 QoS 3 [MQTT-3-8.3-4]",
    "UNSUBSCRIBE: v3.1.1 UNSUBSCRIBE: A2 (with subscribe) [MQTT-3.10.4-5]",
    "UNSUBSCRIBE: v3.1.1 UNSUBSCRIBE: A2 zero mid",
]
# Skipped where the shared data is absent (a clone on its own), never in CI, where a
# missing folder must fail the run rather than quietly drop the conformance count.
needs_data = pytest.mark.skipif(
    not CASES and not os.environ.get("CI"), reason=f"conformance data not found at {DATA}"
)


def _sample() -> list[Case]:
    by_id = {c.case_id: c for c in CASES}
    missing = [cid for cid in SAMPLE_IDS if cid not in by_id]
    assert not missing, f"sample ids not in the data: {missing}"
    return [by_id[cid] for cid in SAMPLE_IDS]


def _outcome_sansio(case: Case) -> str | None:
    try:
        run_sansio(case)
    except CaseFailed as exc:
        return str(exc)
    return None


# --- the tests -------------------------------------------------------------------------


def test_payload_tokens() -> None:
    assert parse_payload("10 r15 s6 'MQIsdp' 03 01 k10 s1 'p'") == (
        b"\x10\x0f\x00\x06MQIsdp\x03\x01\x00\x0a\x00\x01p"
    )
    assert (
        parse_payload("C00100 i7 L1 H2 v300") == b"\xc0\x01\x00\x07\x00\x00\x00\x01\x00\x02\xac\x02"
    )
    assert parse_payload("r268435456") == b"\x80\x80\x80\x80\x01"
    assert parse_payload("'a b'") == b"a b"


@needs_data
def test_data_has_the_documented_shape() -> None:
    assert len(CASES) >= 300
    assert {c.ver for c in CASES} == {3, 4}


@needs_data
def test_sansio_conformance_matches_known_failures() -> None:
    results = {case.case_id: _outcome_sansio(case) for case in CASES}
    passed, failed = _summary("MQTT 3.1/3.1.1 conformance (sans-I/O)", results)
    known = load_known_failures()
    unknown = sorted(set(known) - set(results))
    assert not unknown, f"known_failures.txt names cases not in the data: {unknown}"
    new_failures = {cid: why for cid, why in failed.items() if cid not in known}
    now_passing = sorted(cid for cid in known if cid not in failed)
    assert not new_failures, f"cases failing that are not in known_failures.txt: {new_failures}"
    assert not now_passing, f"cases in known_failures.txt that pass now: {now_passing}"
    assert passed >= MOSQUITTO_PASSES
    assert passed == len(results) - len(known)


@pytest.fixture
async def edge_port() -> AsyncIterator[int]:
    """An MQTT broker (open policy, plain TCP) on 127.0.0.1, fresh per test."""
    core = EdgeCore(EventLog(log_events=False), Policy.open())
    broker = MqttBroker(core, MqttConfig())
    loop = asyncio.get_running_loop()
    protocols: list[MqttServerProtocol] = []

    def factory() -> MqttServerProtocol:
        protocol = MqttServerProtocol(broker, SESSION)
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()
    pending = [p.closed for p in protocols if p.closed is not None]
    async with asyncio.timeout(5):
        await asyncio.gather(*pending)


@needs_data
@pytest.mark.timeout(60)
async def test_every_case_over_loopback_against_one_shared_edge(edge_port: int) -> None:
    # One broker for all cases (unlike the sans-I/O run): state one case leaves
    # behind (a persistent session, say) must not change another's outcome.
    results: dict[str, str | None] = {}
    for case in CASES:
        try:
            await run_socket(case, edge_port)
            results[case.case_id] = None
        except CaseFailed as exc:
            results[case.case_id] = str(exc)
    _, failed = _summary("MQTT 3.1/3.1.1 conformance over loopback (one broker)", results)
    assert set(failed) == set(load_known_failures())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def mosquitto_port(tmp_path: Path) -> AsyncIterator[int]:
    """A real Mosquitto on a free loopback port (probed by binding port 0, then passed)."""
    binary = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if binary is None:
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type all\n"
    )
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        # Mosquitto logs "... running" once its listener is open: wait for that line.
        seen: list[str] = []
        async with asyncio.timeout(10):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    pytest.fail(f"mosquitto exited: {''.join(seen)}")
                seen.append(line)
                if "running" in line:
                    break
        # Keep reading its log so that a full pipe never stalls it.
        drain = asyncio.ensure_future(proc.stderr.read())
        try:
            yield port
        finally:
            proc.terminate()
            await proc.wait()
            await drain
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


@needs_data
@pytest.mark.interop
@pytest.mark.timeout(90)
async def test_socket_sample_against_mosquitto_validates_the_runner(mosquitto_port: int) -> None:
    results: dict[str, str | None] = {}
    for case in _sample():
        try:
            await run_socket(case, mosquitto_port)
            results[case.case_id] = None
        except CaseFailed as exc:
            results[case.case_id] = str(exc)
    _, failed = _summary("socket sample against Mosquitto", results)
    # Mosquitto 2.0.11 passes 271 of the 314 cases with this runner; in the sample it
    # fails only where the data expects a newer Mosquitto's MQTT 5 style CONNACK.
    assert set(failed) == {"CONNECT: v3.1.1 CONNECT: 10 proto ver 2 [MQTT-3.1.2-2]"}
