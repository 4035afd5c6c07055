"""Kill the edge with SIGKILL at random moments under QoS 1 (or 2) load; count what was lost.

``python -m bench.durability --kills 20`` (the test suite runs a few kills through
:func:`run_async`, tests/server/test_durability.py). One edge child process
(``edgesim edge serve``, persistence on) at a time, with the same state directory:

- a subscriber holds a persistent session (clean session 0, client id
  ``durable-sub``) subscribed to ``load/#`` at the QoS of the load, acknowledging
  what it gets;
- publishers (clean sessions) send QoS 1 (``--qos 2``: QoS 2) messages numbered
  0, 1, 2, ... with a window of unacknowledged messages each;
- the edge's ``max_queued`` is raised so that no message is dropped for want of
  room (that is a limit, not a loss);
- after a random time under load (``--min``..``--max`` seconds) the edge gets
  SIGKILL, and a new edge starts on the same state; the clients reconnect.

After the last kill a final edge runs until the subscriber has every
acknowledged message (or 10 seconds pass without progress). Counted: messages
*sent*, *acknowledged* (PUBACK, or with ``--qos 2`` PUBREC, received by a
publisher) and *delivered* (distinct numbers the subscriber received); **lost** =
acknowledged but never delivered, which must be 0. Delivered-but-unacknowledged
(the kill came between the commit and the acknowledgement) and duplicates (QoS 1
is at least once; a QoS 2 message re-sent after a crash, before the subscriber's
PUBREC was committed, also counts) are counted too. The clients speak MQTT 3.1.1
with the edge's own codec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.mqtt.codec import (
    Connack,
    Connect,
    Parser,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    encode,
)

__all__ = ["DurabilityResult", "run"]


@dataclass
class DurabilityResult:
    """The counts of one run (see the module docstring)."""

    kills: int = 0
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0
    lost: int = 0
    delivered_unacknowledged: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    kill_after: list[float] = field(default_factory=list)
    lost_ids: list[int] = field(default_factory=list)


class _Edge:
    """One ``edgesim edge serve`` child process."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self._drain = asyncio.create_task(self._read_rest())

    @classmethod
    async def start(cls, pki: Path, state: Path, synchronous: str) -> _Edge:
        config = state / "edge.toml"
        # A queue long enough that no message is dropped for room: this counts crashes.
        # synchronous "off": persistence off (to show that the count finds losses).
        persistence = (
            "enabled = false" if synchronous == "off" else f'synchronous = "{synchronous}"'
        )
        config.write_text(f"[persistence]\n{persistence}\n[mqtt]\nmax_queued = 1000000\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "edge", "serve",
            "--config", str(config), "--pki", str(pki), "--mqtt", "127.0.0.1:0",
            "--https", "off", "--admin", "off", "--state-dir", str(state), "--policy", "open",
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stderr is not None
        lines = []
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            lines.append(line)
            if not line:
                raise RuntimeError(
                    f"edge did not start: {b''.join(lines).decode(errors='replace')}"
                )
            if b"listening mqtt=127.0.0.1:" in line:
                port = int(line.split(b"mqtt=127.0.0.1:")[1].split()[0])
                return cls(proc, port)

    async def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), 30)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._drain, 5)


class _Client:
    """A minimal MQTT 3.1.1 client over mTLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser(server_side=False)
        # Packets read with the CONNACK (a resumed session's re-sent PUBLISH) wait here.
        self.backlog: list[Any] = []

    @classmethod
    async def connect(
        cls, port: int, ctx: ssl.SSLContext, client_id: str, clean: bool
    ) -> tuple[_Client, bool]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10
        )
        client = cls(reader, writer)
        writer.write(encode(Connect(client_id=client_id, clean_session=clean, keepalive=60)))
        (ack,) = [p async for p in client.packets(first_only=True)]
        if not isinstance(ack, Connack) or ack.return_code != 0:
            raise RuntimeError(f"CONNECT refused: {ack}")
        return client, ack.session_present

    async def packets(self, first_only: bool = False) -> Any:
        backlog = self.backlog
        while True:
            while backlog:
                yield backlog.pop(0)
                if first_only:
                    return
            data = await self.reader.read(65536)
            if not data:
                return
            backlog.extend(self.parser.feed(data))

    def close(self) -> None:
        self.writer.close()


def _context(pki: Path, device: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "root-ca.pem"))
    ctx.load_cert_chain(
        str(pki / "devices" / f"{device}.pem"), str(pki / "devices" / f"{device}.key")
    )
    return ctx


class _Load:
    """The subscriber's and publishers' shared counts."""

    def __init__(self) -> None:
        self.next_id = 0
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.delivered: set[int] = set()
        self.received = 0
        self.progress = asyncio.Event()
        #: The QoS of the publications and of the subscription.
        self.qos = 1


async def _subscriber(port: int, ctx: ssl.SSLContext, load: _Load, ready: asyncio.Event) -> None:
    client, present = await _Client.connect(port, ctx, "durable-sub", clean=False)
    try:
        if not present:
            client.writer.write(encode(Subscribe(1, [("load/#", load.qos)])))
        else:
            ready.set()
        async for packet in client.packets():
            if isinstance(packet, Suback):
                ready.set()
            elif isinstance(packet, Publish):
                n = int(packet.payload)
                load.received += 1
                load.delivered.add(n)
                load.progress.set()
                assert packet.packet_id is not None
                ack = Puback(packet.packet_id) if packet.qos == 1 else Pubrec(packet.packet_id)
                client.writer.write(encode(ack))
            elif isinstance(packet, Pubrel):
                client.writer.write(encode(Pubcomp(packet.packet_id)))
    finally:
        client.close()


async def _publisher(port: int, ctx: ssl.SSLContext, name: str, load: _Load, window: int) -> None:
    client, _ = await _Client.connect(port, ctx, name, clean=True)
    pending: dict[int, int] = {}
    room = asyncio.Event()
    pid = 0

    async def acks() -> None:
        # QoS 1: PUBACK acknowledges. QoS 2: PUBREC does (the edge owns the message
        # from then on); the packet id stays in use until PUBCOMP.
        async for packet in client.packets():
            if isinstance(packet, Puback | Pubcomp):
                n = pending.pop(packet.packet_id, None)
                if n is not None:
                    load.acked.add(n)
                    room.set()
            elif isinstance(packet, Pubrec):
                n = pending.get(packet.packet_id)
                if n is not None:
                    load.acked.add(n)
                    client.writer.write(encode(Pubrel(packet.packet_id)))

    reading = asyncio.create_task(acks())
    try:
        while not reading.done() and not client.writer.is_closing():
            if len(pending) >= window:
                room.clear()
                waiter = asyncio.create_task(room.wait())
                await asyncio.wait({waiter, reading}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            pid = pid % 65535 + 1
            n = load.next_id
            load.next_id += 1
            pending[pid] = n
            load.sent.add(n)
            publish = Publish(f"load/{name}", b"%d" % n, qos=load.qos, packet_id=pid)
            client.writer.write(encode(publish))
            if len(pending) % 8 == 0:
                await client.writer.drain()
    finally:
        reading.cancel()
        client.close()


async def _cycle(
    pki: Path, state: Path, load: _Load, rng: random.Random, args: dict[str, Any]
) -> float:
    """One edge under load until SIGKILL; return how long the load ran."""
    edge = await _Edge.start(pki, state, args["synchronous"])
    ready = asyncio.Event()
    tasks = [asyncio.create_task(_subscriber(edge.port, _context(pki, "dev-00000"), load, ready))]
    await asyncio.wait_for(ready.wait(), 30)
    tasks += [
        asyncio.create_task(
            _publisher(
                edge.port, _context(pki, f"dev-{i + 1:05d}"), f"pub{i}", load, args["window"]
            )
        )
        for i in range(args["publishers"])
    ]
    after = rng.uniform(args["min"], args["max"])
    await asyncio.sleep(after)  # the random moment of the kill (a load generator, not a test wait)
    await edge.kill()
    await asyncio.wait(tasks, timeout=30)
    for task in tasks:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (ConnectionError, ssl.SSLError, OSError, RuntimeError)):
                raise exc  # type: ignore[misc]
    return after


async def _drain(pki: Path, state: Path, load: _Load, quiet: float, synchronous: str) -> None:
    edge = await _Edge.start(pki, state, synchronous)
    ready = asyncio.Event()
    task = asyncio.create_task(_subscriber(edge.port, _context(pki, "dev-00000"), load, ready))
    try:
        while not load.acked <= load.delivered:
            load.progress.clear()
            try:
                await asyncio.wait_for(load.progress.wait(), quiet)
            except TimeoutError:
                break
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await edge.kill(signal.SIGTERM)


async def run_async(
    kills: int,
    *,
    seed: int | None = None,
    publishers: int = 2,
    window: int = 64,
    min_s: float = 0.05,
    max_s: float = 0.8,
    drain: float = 10.0,
    synchronous: str = "full",
    workdir: Path | None = None,
    qos: int = 1,
) -> DurabilityResult:
    """Run ``kills`` kill cycles and the final drain; see the module docstring."""
    from certs.quickstart import quickstart

    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="durability-", dir=workdir) as tmp:
        base = Path(tmp)
        pki = quickstart(base / "pki", devices=publishers + 1).out
        state = base / "state"
        state.mkdir()
        load = _Load()
        load.qos = qos
        args = {
            "publishers": publishers, "window": window, "min": min_s, "max": max_s,
            "synchronous": synchronous,
        }  # fmt: skip
        result = DurabilityResult()
        for _ in range(kills):
            result.kill_after.append(round(await _cycle(pki, state, load, rng, args), 3))
            result.kills += 1
        await _drain(pki, state, load, drain, synchronous)
    lost = sorted(load.acked - load.delivered)
    result.sent = len(load.sent)
    result.acknowledged = len(load.acked)
    result.delivered = len(load.delivered)
    result.lost = len(lost)
    result.lost_ids = lost[:20]
    result.delivered_unacknowledged = len(load.delivered - load.acked)
    result.duplicates = load.received - len(load.delivered)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """For ``python -m bench``: 20 kills (5 with ``quick``)."""
    result = asyncio.run(run_async(5 if quick else 20, seed=17))
    return asdict(result)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.durability``: print the counts as JSON; exit 1 if any was lost."""
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--window", type=int, default=64, help="unacknowledged messages each")
    parser.add_argument("--qos", type=int, choices=(1, 2), default=1)
    parser.add_argument("--min", type=float, default=0.05, help="shortest load before a kill (s)")
    parser.add_argument("--max", type=float, default=0.8, help="longest load before a kill (s)")
    parser.add_argument(
        "--synchronous",
        choices=("full", "normal", "off"),
        default="full",
        help="the edge's [persistence] synchronous; off: persistence off (losses expected)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    result = asyncio.run(
        run_async(
            args.kills, seed=seed, publishers=args.publishers, window=args.window,
            min_s=args.min, max_s=args.max, synchronous=args.synchronous, qos=args.qos,
        )
    )  # fmt: skip
    out = asdict(result)
    out["seed"] = seed
    out["synchronous"] = args.synchronous
    out["qos"] = args.qos
    print(json.dumps(out, indent=1))
    return 1 if result.lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
