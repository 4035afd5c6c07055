"""Shared values of the admin API tests."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from edge.core.events import EventLog
from edge.trust.propagation import TrustService

TOKEN = "test-token-0123456789"


@dataclass
class Admin:
    """A running admin API and an authenticated client session for it."""

    url: str
    http: aiohttp.ClientSession
    trust: TrustService
    events: EventLog

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}
