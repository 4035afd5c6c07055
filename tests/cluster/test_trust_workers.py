"""Certificate sets on real worker processes: ``edgesim edge serve --workers 2 --cluster``.

Two edge nodes with two workers each (four processes plus two supervisors) on one
nats-server from the wheel; changes made with ``edgesim trust --cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("nats")

from edgenodes import EDGESIM, edgesim

from certs.authority import CertificateAuthority
from certs.quickstart import QuickstartResult
from edge.cluster.natsserver import NatsServer

# Six Python processes start on a shared 2-core box: give them time.
pytestmark = [pytest.mark.timeout(360), pytest.mark.slow]

#: What every ``edgesim`` run here may take: 90 s, not the helper's default 60 (the
#: runs share the box with six Python processes of the edge nodes).
CLI_TIMEOUT = 90
CONNECT = bytes.fromhex("101000044d5154540402003c000464657631")


class Node:
    """One ``edge serve --workers 2 --cluster URL`` supervisor and its workers."""

    def __init__(self, name: str, base: Path, qs: QuickstartResult, url: str) -> None:
        self.name, self.base, self.qs, self.url = name, base / name, qs, url
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}

    async def start(self) -> Node:
        self.base.mkdir(parents=True)
        self.proc = await asyncio.create_subprocess_exec(
            *EDGESIM, "edge", "serve", "--json", "--workers", "2", "--cluster", self.url,
            "--node-id", self.name, "--pki", str(self.qs.out), "--state-dir", str(self.base),
            "--store", str(self.base / "store.db"), "--mqtt", "127.0.0.1:0",
            "--https", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdout is not None
        # --json prints one (indented) document once every worker is ready.
        text = b""
        async with asyncio.timeout(180):
            while not self.ready:
                line = await self.proc.stdout.readline()
                assert line, "the supervisor exited before it was ready"
                text += line
                with contextlib.suppress(ValueError):
                    found = json.loads(text)
                    if isinstance(found, dict) and "workers" in found:
                        self.ready = found
        return self

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in self.ready["workers"]]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def nodes(tmp_path: Path, qs: QuickstartResult) -> AsyncIterator[tuple[str, list[Node]]]:
    server = NatsServer(store_dir=tmp_path / "nats").start()
    started: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            started.append(await Node(name, tmp_path, qs, server.url).start())
        yield server.url, started
    finally:
        for node in started:
            await node.stop()
        server.stop()


async def status(url: str) -> dict[str, Any]:
    code, out, err = await edgesim(
        "trust", "--cluster", url, "status", "--json", timeout=CLI_TIMEOUT
    )
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


async def active_event(admin: str, token: str, *, above: int, timeout: float = 60) -> int:
    """Wait for the node's ``trust.active`` event of a generation above ``above``."""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{admin}/v1/events/stream?kind=trust.active"
    async with (
        asyncio.timeout(timeout),
        aiohttp.ClientSession(headers=headers) as http,
        http.get(url) as response,
    ):
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if int(event.get("generation", -1)) > above:
                    return int(event["generation"])
    raise AssertionError("the event stream ended")


def workers_of(data: dict[str, Any]) -> dict[str, int]:
    return {
        f"{n['node']}/{w['worker']}": int(w["applied_generation"])
        for n in data["cluster"]["nodes"]
        for w in n["workers"]
    }


async def test_an_upload_is_applied_by_every_worker_process_and_survives_a_kill_9(
    nodes: tuple[str, list[Node]], tmp_path: Path, qs: QuickstartResult
) -> None:
    url, (a, b) = nodes
    everyone = {f"{n}/{w}" for n in ("node-a", "node-b") for w in ("0", "1")}
    first = await status(url)
    # Seeded once from the PKI by whichever worker came first; all four applied it.
    assert [s["name"] for s in first["sets"]] == ["default"]
    assert workers_of(first) == dict.fromkeys(everyone, first["generation"])

    pem = tmp_path / "fleet.pem"
    pem.write_bytes(CertificateAuthority.create_root("Workers Root").cert_pem)
    code, out, err = await edgesim(
        "trust", "--cluster", url, "upload", "fleet", str(pem), timeout=CLI_TIMEOUT
    )
    assert code == 0, err

    # Node b says so once all four workers have it (its trust.active event), and its
    # admin API shows every worker of both nodes.
    admin_b = f"http://127.0.0.1:{b.ready['ports']['admin']}"
    token_b = (b.base / "store.db.token").read_text().strip()
    await active_event(admin_b, token_b, above=first["generation"])
    code, out, err = await edgesim(
        "trust", "status", "--json", "--admin", admin_b, "--token", token_b, timeout=CLI_TIMEOUT
    )
    assert code == 0, err
    seen = json.loads(out)
    assert seen["state"] == "active"
    assert set(workers_of(seen)) == everyone
    assert set(workers_of(seen).values()) == {seen["generation"]}

    # kill -9 one of node a's workers: its supervisor starts another, which replays
    # the store from NATS, and the next change waits for it as for any live worker.
    victim = a.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    pem.write_bytes(CertificateAuthority.create_root("Workers Root 2").cert_pem)
    code, out, err = await edgesim(
        "trust", "--cluster", url, "upload", "fleet", str(pem), timeout=CLI_TIMEOUT
    )
    assert code == 0, err
    # Active means every live worker, and node-a/1 is live again (its replacement
    # writes the same key) or held the change until its key expired.
    await active_event(admin_b, token_b, above=seen["generation"], timeout=120)
    now = await status(url)
    applied = workers_of(now)
    assert set(applied) == everyone
    assert set(applied.values()) == {now["generation"]}
    pids = {w["pid"] for n in now["cluster"]["nodes"] for w in n["workers"]}
    assert victim not in pids  # node-a/1 is a new process

    # Devices still connect on both nodes (the PKI's set is untouched).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(qs.root_cert))
    ctx.load_cert_chain(
        str(qs.devices_dir / "dev-00000.pem"), str(qs.devices_dir / "dev-00000.key")
    )
    for node in (a, b):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", node.ready["ports"]["mqtt"], ssl=ctx, server_hostname="localhost"
        )
        writer.write(CONNECT)
        assert (await asyncio.wait_for(reader.readexactly(4), 20))[:1] == b"\x20"
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
