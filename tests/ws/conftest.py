"""Fixtures for the WebSocket tests: the edge harness and a test PKI."""

from __future__ import annotations

from edgefixtures import harness, pki

__all__ = ["harness", "pki"]
