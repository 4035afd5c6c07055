"""Malformed and slow HTTP requests on the real edge's HTTPS port, over completed mTLS.

A request a parser rejects gets ``400`` and a close at once (as plain aiohttp
answers), not silence until a timeout; a request head that trickles in is cut
off by the head timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from testmodules import load_harness

from certs.quickstart import QuickstartResult, quickstart
from edge.config import HttpConfig
from edge.server import EdgeServer

harness = load_harness()


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> QuickstartResult:
    """A quickstart PKI with one device."""
    return quickstart(tmp_path_factory.mktemp("qs") / "pki", devices=1)


@contextlib.asynccontextmanager
async def _tls(
    edge: EdgeServer, qs: QuickstartResult
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    ctx = harness.device_context(qs, "dev-00000")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", edge.ports["https"], ssl=ctx, server_hostname="localhost"
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.0\n\n",  # bare-LF line endings (the repro)
        b"GET / HTTP/1.0\nHost: x\n\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
    ],
)
async def test_a_malformed_request_gets_400_and_a_close(
    tmp_path: Path, qs: QuickstartResult, request_bytes: bytes
) -> None:
    async with (
        EdgeServer(harness.edge_config(tmp_path, qs.out)) as edge,
        _tls(edge, qs) as (
            reader,
            writer,
        ),
    ):
        writer.write(request_bytes)
        # Everything the edge sends, until it closes: bounded by the test's timeout,
        # far below the head timeout (30 s), so a silent edge fails here.
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.split(b" ", 2)[1] == b"400", answer[:80]


@pytest.mark.timeout(30)
async def test_a_slowloris_request_head_times_out(tmp_path: Path, qs: QuickstartResult) -> None:
    config = harness.edge_config(tmp_path, qs.out)
    config = config.with_overrides(http=HttpConfig(request_head_timeout=0.5))
    async with EdgeServer(config) as edge, _tls(edge, qs) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        event = await edge.events.wait_for(
            lambda e: e["kind"] == "http.request" and e.get("status") == 408
        )
        assert "no complete request head within 0.5 s" in event["reason"]
        assert await asyncio.wait_for(reader.read(), 10) == b""


@pytest.mark.timeout(30)
async def test_an_idle_keepalive_connection_is_closed(tmp_path: Path, qs: QuickstartResult) -> None:
    config = harness.edge_config(tmp_path, qs.out)
    config = config.with_overrides(http=HttpConfig(keepalive_timeout=0.5))
    async with EdgeServer(config) as edge, _tls(edge, qs) as (reader, writer):
        writer.write(b"GET /topics/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 404")
        # Then nothing: the edge closes the idle connection (the test's timeout bounds it).
        rest = await asyncio.wait_for(reader.read(), 10)
        # read() returned: EOF came, after only the rest of the one response.
        assert b"HTTP/1.1 " not in rest
        assert rest.endswith(b"}")
