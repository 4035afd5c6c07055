"""Propagation: pending -> propagating -> active, per worker, with and without delay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from trustpki import NOW, crl_pem, root

from edge.core.events import EventLog
from edge.trust.errors import PropagationTimeout, RefusedError, TrustError
from edge.trust.model import TrustSnapshot
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A worker that records the generations it applied."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, snapshot: TrustSnapshot) -> None:
        self.seen.append(snapshot.generation)


@pytest.fixture
async def events() -> EventLog:
    return EventLog(log_events=False)


async def make_service(
    path: Path, events: EventLog, delay: float = 0.0, **workers: object
) -> TrustService:
    service = TrustService(
        SqliteTrustStore(path, clock=lambda: NOW), events=events, propagation_delay=delay
    )
    for name, worker in workers.items():
        assert callable(worker)
        service.register_worker(name, worker)
    await service.start()
    return service


@pytest.fixture
async def service(store_path: Path, events: EventLog) -> AsyncIterator[TrustService]:
    svc = await make_service(store_path, events, w1=Recorder())
    yield svc
    await svc.close()


def kinds(events: EventLog, since: int = 0) -> list[str]:
    return [e["kind"] for e in events.query(since=since, kind="trust.")]


async def test_start_applies_the_stored_state(store_path: Path, events: EventLog) -> None:
    with SqliteTrustStore(store_path, clock=lambda: NOW) as store:
        store.upload("fleet", root().cert_pem)
        store.bind("fleet", "*")
    worker = Recorder()
    svc = await make_service(store_path, events, w=worker)
    try:
        assert worker.seen == [2]
        assert svc.current().resolve(None) is not None
        assert svc.status()["state"] == "active"
    finally:
        await svc.close()


async def test_not_started_is_an_error(store_path: Path) -> None:
    svc = TrustService(SqliteTrustStore(store_path))
    with pytest.raises(TrustError, match="not started"):
        svc.current()
    await svc.close()


async def test_upload_propagates_without_delay(service: TrustService, events: EventLog) -> None:
    since = events.last_id
    info = await service.upload("fleet", root().cert_pem)
    assert info.version == 1
    assert info.state == "pending"
    snap = await service.wait_active(timeout=5)
    assert snap.sets["fleet"].version == 1
    assert service.current() is snap
    assert kinds(events, since) == [
        "trust.uploaded",
        "trust.activated",
        "trust.pending",
        "trust.propagating",
        "trust.active",
    ]
    assert [v.state for v in await service.versions("fleet")] == ["active"]


async def test_delay_makes_pending_and_propagating_observable(
    store_path: Path, events: EventLog
) -> None:
    worker = Recorder()
    svc = await make_service(store_path, events, delay=0.2, w=worker)
    try:
        start = svc.current().generation
        await svc.upload("fleet", root().cert_pem)
        # Nothing has yielded to the propagation task yet: the change is pending.
        status = svc.status()
        assert status["state"] == "pending"
        assert status["sets"] == [
            {
                "name": "fleet",
                "version": 1,
                "applied_version": None,
                "crls": 0,
                "disconnect_on_revoke": False,
                "state": "pending",
            }
        ]
        await events.wait_for(lambda e: e["kind"] == "trust.propagating", timeout=5)
        await svc.bind("fleet", "devices.example.com")
        status = svc.status()
        assert status["state"] == "propagating"
        assert status["sets"][0]["state"] == "propagating"
        assert status["bindings"] == [
            {"host": "devices.example.com", "set": "fleet", "state": "pending"}
        ]
        assert [v.state for v in await svc.versions("fleet")] == ["propagating"]
        assert svc.current().generation == start, "new handshakes still use the old snapshot"
        assert "fleet" not in svc.current().sets
        assert worker.seen == [start]
        snap = await svc.wait_active(timeout=5)
        assert snap.resolve("devices.example.com") is snap.sets["fleet"]
        assert worker.seen == [start, snap.generation - 1, snap.generation]
        status = svc.status()
        assert status["state"] == "active"
        assert status["sets"][0]["state"] == "active"
        assert status["bindings"][0]["state"] == "active"
    finally:
        await svc.close()


async def test_a_worker_that_has_not_applied_holds_the_change_back(
    store_path: Path, events: EventLog
) -> None:
    fast = Recorder()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    slow_seen: list[int] = []

    def slow(snapshot: TrustSnapshot) -> asyncio.Future[None] | None:
        slow_seen.append(snapshot.generation)
        # Applied at once at start; later snapshots wait for the test's go-ahead.
        return gate if len(slow_seen) > 1 else None

    svc = await make_service(store_path, events, fast=fast, slow=slow)
    try:
        await svc.upload("fleet", root().cert_pem)
        target = svc.status()["generation"]
        await events.wait_for(lambda e: e["kind"] == "trust.propagating", timeout=5)
        with pytest.raises(PropagationTimeout, match=r"workers not done: slow \(applied 0\)"):
            await svc.wait_active(timeout=0.1)
        status = svc.status()
        assert status["state"] == "propagating"
        assert status["workers"] == [
            {"name": "fast", "applied_generation": target, "error": None},
            {"name": "slow", "applied_generation": 0, "error": None},
        ]
        assert "fleet" not in svc.current().sets
        gate.set_result(None)
        snap = await svc.wait_active(target, timeout=5)
        assert snap.sets["fleet"].version == 1
        assert svc.status()["state"] == "active"
    finally:
        await svc.close()


async def test_a_failing_worker_is_reported(store_path: Path, events: EventLog) -> None:
    calls: list[int] = []

    def broken(snapshot: TrustSnapshot) -> None:
        calls.append(snapshot.generation)
        if len(calls) > 1:
            raise RuntimeError("context build failed")

    svc = await make_service(store_path, events, broken=broken)
    try:
        await svc.upload("fleet", root().cert_pem)
        failed = await events.wait_for(lambda e: e["kind"] == "trust.apply_failed", timeout=5)
        assert failed["worker"] == "broken"
        assert failed["reason"] == "RuntimeError: context build failed"
        assert svc.status()["workers"][0]["error"] == "RuntimeError: context build failed"
        with pytest.raises(PropagationTimeout, match="context build failed"):
            await svc.wait_active(timeout=0.1)
    finally:
        await svc.close()


async def test_a_worker_registered_later_gets_the_active_snapshot(
    service: TrustService,
) -> None:
    await service.upload("fleet", root().cert_pem)
    snap = await service.wait_active(timeout=5)
    late = Recorder()
    service.register_worker("late", late)
    assert late.seen == [snap.generation]
    with pytest.raises(TrustError, match="already registered"):
        service.register_worker("late", late)


async def test_refused_upload_changes_nothing_and_is_an_event(
    service: TrustService, events: EventLog
) -> None:
    generation = service.status()["generation"]
    with pytest.raises(RefusedError):
        await service.upload("fleet", b"garbage")
    refused = events.query(kind="trust.refused")[-1]
    assert refused["outcome"] == "refused"
    assert refused["set"] == "fleet"
    assert refused["findings"][0]["code"] == "format-text"
    assert service.status()["generation"] == generation
    assert await service.list_sets() == []


async def test_activation_rollback_binding_crl_and_delete_propagate(
    service: TrustService, events: EventLog
) -> None:
    first, second = root("First"), root("Second")
    await service.upload("fleet", first.cert_pem)
    await service.upload("fleet", second.cert_pem, activate=False)
    await service.bind("fleet", "*")
    snap = await service.wait_active(timeout=5)
    assert snap.resolve(None) is snap.sets["fleet"]
    assert snap.sets["fleet"].version == 1

    await service.activate("fleet", 2)
    assert (await service.wait_active(timeout=5)).sets["fleet"].version == 2

    await service.rollback("fleet")
    assert (await service.wait_active(timeout=5)).sets["fleet"].version == 1

    await service.add_crl("fleet", crl_pem(first, 42))
    assert len((await service.wait_active(timeout=5)).sets["fleet"].crls) == 1
    assert len(await service.crls("fleet")) == 1

    await service.unbind("*")
    assert (await service.wait_active(timeout=5)).resolve(None) is None
    await service.delete("fleet")
    assert (await service.wait_active(timeout=5)).sets == {}
    assert {
        "trust.activated",
        "trust.rolled_back",
        "trust.bound",
        "trust.unbound",
        "trust.crl_added",
        "trust.deleted",
    } <= set(kinds(events))


async def test_changes_from_another_process_are_picked_up(
    service: TrustService, store_path: Path
) -> None:
    with SqliteTrustStore(store_path, clock=lambda: NOW) as other:
        other.upload("external", root().cert_pem)
    generation = await service.refresh()
    snap = await service.wait_active(generation, timeout=5)
    assert "external" in snap.sets


async def test_watch_interval_polls_the_store(store_path: Path, events: EventLog) -> None:
    svc = TrustService(
        SqliteTrustStore(store_path, clock=lambda: NOW), events=events, watch_interval=0.05
    )
    await svc.start()
    try:
        with SqliteTrustStore(store_path, clock=lambda: NOW) as other:
            other.upload("external", root().cert_pem)
        await events.wait_for(
            lambda e: e["kind"] == "trust.active" and "external" in e.get("sets", {}), timeout=5
        )
        assert "external" in svc.current().sets
    finally:
        await svc.close()


async def test_a_worker_registered_mid_propagation_gets_the_new_snapshot(
    store_path: Path, events: EventLog
) -> None:
    svc = await make_service(store_path, events, delay=0.1, first=Recorder())
    try:
        start = svc.current().generation
        await svc.upload("fleet", root().cert_pem)
        await events.wait_for(lambda e: e["kind"] == "trust.propagating", timeout=5)
        late = Recorder()
        svc.register_worker("late", late)
        assert late.seen == [start], "it starts with what is active"
        snap = await svc.wait_active(timeout=5)
        assert late.seen == [start, snap.generation]
        assert svc.status()["state"] == "active"
    finally:
        await svc.close()


async def test_unregistered_workers_no_longer_hold_changes_back(
    store_path: Path, events: EventLog
) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    calls: list[int] = []

    def stuck(snapshot: TrustSnapshot) -> asyncio.Future[None] | None:
        calls.append(snapshot.generation)
        return never if len(calls) > 1 else None

    svc = await make_service(store_path, events, stuck=stuck)
    try:
        await svc.upload("fleet", root().cert_pem)
        await events.wait_for(lambda e: e["kind"] == "trust.propagating", timeout=5)
        svc.unregister_worker("stuck")
        never.cancel()
        await svc.bind("fleet", "*")
        snap = await svc.wait_active(timeout=5)
        assert snap.resolve(None) is not None
    finally:
        await svc.close()
