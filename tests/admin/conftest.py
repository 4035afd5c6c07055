"""Fixtures for the admin API tests: a real listener on 127.0.0.1, port 0."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "trust"))
sys.path.insert(0, str(Path(__file__).parent))

from adminkit import TOKEN, Admin
from trustpki import NOW

from edge.core.events import EventLog
from edge.http.admin import make_admin_app, start_admin
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore, StoreLimits


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    events = EventLog(log_events=False)
    trust = TrustService(
        SqliteTrustStore(tmp_path / "store.db", clock=lambda: NOW, limits=StoreLimits(max_sets=3)),
        events=events,
    )
    await trust.start()
    runner, port = await start_admin(make_admin_app(trust, events, token=TOKEN), "127.0.0.1", 0)
    async with aiohttp.ClientSession() as http:
        yield Admin(f"http://127.0.0.1:{port}", http, trust, events)
    await runner.cleanup()
    await trust.close()
