"""``edgesim edge serve --log-format json``: one JSON object per line, events with their fields."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.logs import JsonFormatter

pytestmark = pytest.mark.timeout(60)


def test_a_plain_record_is_one_line_of_json() -> None:
    record = logging.LogRecord("edgesim.x", logging.WARNING, __file__, 1, "a\nb %s", ("c",), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "a\nb c"
    assert out["level"] == "warning"
    assert out["logger"] == "edgesim.x"
    assert out["time"].endswith("Z")


async def _json_line(stream: asyncio.StreamReader, want: Any) -> dict[str, Any]:
    """The next line of JSON from ``stream`` for which ``want`` is true."""
    while True:
        raw = await asyncio.wait_for(stream.readline(), 20)
        assert raw, "the edge closed its stderr"
        text = raw.decode().strip()
        if not text.startswith("{"):
            continue  # the startup banner (`say`) is for people, not a log record
        obj: dict[str, Any] = json.loads(text)
        if want(obj):
            return obj


async def test_serve_logs_events_as_json_with_the_events_fields(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge.cli",
        "edge",
        "serve",
        "--state-dir",
        str(tmp_path / "state"),
        "--mqtt",
        "127.0.0.1:0",
        "--https",
        "off",
        "--admin",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "-v",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        started = await _json_line(proc.stderr, lambda o: o.get("kind") == "edge.started")
        assert started["level"] == "info"
        assert started["logger"] == "edgesim.events"
        admin = started["ports"]["admin"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{admin}/v1/status") as r:
                assert r.status == 401
            logged = await _json_line(proc.stderr, lambda o: o.get("kind") == "admin.denied")
            token = (tmp_path / "state" / "trust.db.token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            url = f"http://127.0.0.1:{admin}/v1/events?kind=admin.denied"
            async with http.get(url, headers=headers) as r:
                (event,) = (await r.json())["events"]
        # The log line is the event: the same keys and values, plus level and logger.
        assert {k: v for k, v in logged.items() if k not in ("level", "logger")} == event
        assert logged["reason"]
        assert logged["path"] == "/v1/status"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
