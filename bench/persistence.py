"""What persistence costs: QoS 1 publish throughput with it off and on, side by side in one run.

``python -m bench.persistence`` (and ``make bench``). Three edge child processes,
``[persistence] enabled = false``, ``synchronous = "normal"`` and ``synchronous =
"full"`` (the default), take turns for several rounds. In each round, publishers
(clean sessions, MQTT 3.1.1 over mTLS) send N QoS 1 messages with a window of
unacknowledged ones each to one topic that a persistent session (clean session 0)
holds at QoS 1 and acknowledges. With persistence on, every message is stored for
that session and deleted at its PUBACK, and each PUBACK to a publisher waits for
the batch that holds its message (group commit). Reported per configuration, as
medians over the rounds: messages acknowledged per second (wall clock, first
PUBLISH to last PUBACK) and the edge's CPU per message (from /proc), plus the
ratios to persistence off.

Timings on a shared machine are noisy: read the ratios of one run, and the build
(compiled or interpreted) the report names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.durability import _Client, _context, _Edge
from bench.procstat import cpu_seconds
from edge.mqtt.codec import Puback, Publish, Subscribe, encode

__all__ = ["run"]

CONFIGS = ("off", "normal", "full")


async def _round(
    edge: _Edge, pki: Path, messages: int, publishers: int, window: int
) -> dict[str, float]:
    sub, present = await _Client.connect(edge.port, _context(pki, "dev-00000"), "bench-sub", False)
    got = 0
    everything = asyncio.Event()
    subscribed = asyncio.Event()

    async def subscriber() -> None:
        nonlocal got
        async for packet in sub.packets():
            if isinstance(packet, Publish):
                assert packet.packet_id is not None
                sub.writer.write(encode(Puback(packet.packet_id)))
                got += 1
                if got >= messages:
                    everything.set()
            else:
                subscribed.set()

    reading = asyncio.create_task(subscriber())
    if not present:
        sub.writer.write(encode(Subscribe(1, [("bench/#", 1)])))
        await asyncio.wait_for(subscribed.wait(), 30)
    each = messages // publishers

    async def publisher(i: int) -> None:
        client, _ = await _Client.connect(
            edge.port, _context(pki, f"dev-{i + 1:05d}"), f"bench-pub{i}", True
        )
        room = asyncio.Semaphore(window)
        done = asyncio.Event()
        acked = 0

        async def acks() -> None:
            nonlocal acked
            async for packet in client.packets():
                if isinstance(packet, Puback):
                    room.release()
                    acked += 1
                    if acked == each:
                        done.set()

        task = asyncio.create_task(acks())
        payload = b"x" * 64
        for n in range(each):
            await room.acquire()
            client.writer.write(
                encode(Publish(f"bench/{i}", payload, qos=1, packet_id=n % 65535 + 1))
            )
        await asyncio.wait_for(done.wait(), 120)
        task.cancel()
        client.close()

    cpu0 = cpu_seconds(edge.proc.pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    wall = time.perf_counter() - t0
    await asyncio.wait_for(everything.wait(), 120)
    cpu = cpu_seconds(edge.proc.pid) - cpu0
    reading.cancel()
    sub.close()
    total = each * publishers
    return {"per_second": total / wall, "cpu_us": cpu / total * 1e6}


async def run_async(
    rounds: int = 5, messages: int = 20_000, publishers: int = 4, window: int = 64
) -> dict[str, Any]:
    """Run the comparison (see the module docstring); return the figures."""
    from certs.quickstart import quickstart
    from edge.compiled import status

    with tempfile.TemporaryDirectory(prefix="persistence-") as tmp:
        base = Path(tmp)
        pki = quickstart(base / "pki", devices=publishers + 1).out
        edges: dict[str, _Edge] = {}
        for name in CONFIGS:
            state = base / name
            state.mkdir()
            edges[name] = await _Edge.start(pki, state, name)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        try:
            await _round(edges["full"], pki, 2000, publishers, window)  # warm up
            for r in range(rounds):
                # Take turns, in a different order each round.
                order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
                for name in order:
                    samples[name].append(
                        await _round(edges[name], pki, messages, publishers, window)
                    )
        finally:
            for edge in edges.values():
                await edge.kill()
    out: dict[str, Any] = {
        "build": status(),
        "messages_per_round": messages,
        "rounds": rounds,
        "publishers": publishers,
        "window": window,
    }
    for name in CONFIGS:
        out[name] = {
            "per_second": round(statistics.median(s["per_second"] for s in samples[name])),
            "cpu_us_per_message": round(statistics.median(s["cpu_us"] for s in samples[name]), 1),
        }
    off = out["off"]
    for name in ("normal", "full"):
        out[name]["throughput_vs_off"] = round(out[name]["per_second"] / off["per_second"], 2)
        out[name]["cpu_vs_off"] = round(
            out[name]["cpu_us_per_message"] / off["cpu_us_per_message"], 2
        )
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """For ``python -m bench``."""
    figures = asyncio.run(run_async(rounds=2 if quick else 5, messages=5000 if quick else 20_000))
    print(json.dumps(figures, indent=1))
    return figures


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.persistence [--rounds N] [--messages N]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.persistence", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000, help="per round and configuration")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args(argv)
    figures = asyncio.run(run_async(args.rounds, args.messages, args.publishers, args.window))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
