"""GET /metrics: Prometheus text and OpenMetrics from a running edge, checked against a fleet."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import config_from_dict
from edge.core.events import EventLog
from edge.http.admin import make_admin_app, start_admin
from edge.trust.propagation import TrustService
from edge.trust.sqlite import SqliteTrustStore

pytestmark = pytest.mark.timeout(90)


def _get(
    url: str, token: str | None, accept: str = "text/plain"
) -> tuple[int, str, dict[str, str]]:
    headers = {"Accept": accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_handshakes_by_alert_equal_the_fleets_refusals_by_reason(edge: Any, fleet: Any) -> None:
    report = fleet(
        devices=24,
        protocol="mix",
        faults={"expired": 2, "wrong-ca": 3, "no-client-auth": 1},
        ramp=200,
    )
    assert report["ok"], report["fidelity"]
    status, body, _ = _get(edge.admin_url + "/metrics", edge.admin_token)
    assert status == 200, body
    samples = _samples(body)
    refused: dict[str, int] = {}
    accepted = 0
    for labels, value in samples["edgesim_handshakes_total"]:
        if labels["outcome"] == "refused":
            refused[labels["alert"]] = refused.get(labels["alert"], 0) + int(value)
        else:
            assert labels["alert"] == ""
            assert labels["set"], labels  # the set the device was checked against
            accepted += int(value)
    assert refused == report["outcomes"]["refused"]
    assert accepted == sum(report["outcomes"]["connected"].values())
    # Every handshake is in the duration histogram of its outcome, in seconds.
    counts = {
        labels["outcome"]: v for labels, v in samples["edgesim_handshake_duration_seconds_count"]
    }
    assert counts == {"accepted": accepted, "refused": sum(refused.values())}
    inf = {
        labels["outcome"]: v
        for labels, v in samples["edgesim_handshake_duration_seconds_bucket"]
        if labels["le"] == "+Inf"
    }
    assert inf == counts
    # No label names a device.
    for name, rows in samples.items():
        for labels, _value in rows:
            assert not any("dev-" in v for v in labels.values()), (name, labels)


def test_metrics_need_the_token_by_default(edge: Any) -> None:
    status, _body, headers = _get(edge.admin_url + "/metrics", None)
    assert status == 401
    assert "Bearer" in headers["WWW-Authenticate"]
    assert edge.server.config.metrics_auth is True


async def test_metrics_without_the_token_when_configured(tmp_path: Path) -> None:
    cfg = config_from_dict({"metrics": {"auth": False}}, base=tmp_path, source="edge.toml")
    assert cfg.metrics_auth is False
    events = EventLog(log_events=False)
    trust = TrustService(SqliteTrustStore(tmp_path / "store.db"), events=events)
    await trust.start()
    app = make_admin_app(trust, events, token="t0ken", metrics_auth=cfg.metrics_auth)
    runner, port = await start_admin(app, "127.0.0.1", 0)
    try:
        events.emit("tls.refused", "refused", alert="unknown_ca", set="default")
        written = events.last_id  # the denied call below writes one more
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                text = await r.text()
            # The rest of the admin API still needs the token.
            async with http.get(f"http://127.0.0.1:{port}/v1/status") as r:
                assert r.status == 401
            # A device route needs a running edge, which this app has not got.
            headers = {"Authorization": "Bearer t0ken"}
            async with http.get(f"http://127.0.0.1:{port}/v1/devices", headers=headers) as r:
                assert r.status == 503
    finally:
        await runner.cleanup()
        await trust.close()
    samples = _samples(text)
    assert samples["edgesim_handshakes_total"] == [
        ({"outcome": "refused", "alert": "unknown_ca", "set": "default"}, 1.0)
    ]
    assert samples["edgesim_events_written_total"][0][1] == written


def test_openmetrics_when_the_scraper_asks_for_it(edge: Any, device: Any) -> None:
    dev = device("dev-om", protocol="mqtt")
    assert dev.subscribe("devices/dev-om/#").ok
    status, body, headers = _get(
        edge.admin_url + "/metrics",
        edge.admin_token,
        accept="application/openmetrics-text; version=1.0.0",
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    samples = _samples(_get(edge.admin_url + "/metrics", edge.admin_token)[1])
    open_mqtt = [
        v for labels, v in samples["edgesim_connections_open"] if labels["protocol"] == "mqtt"
    ]
    assert open_mqtt == [1.0]
    assert samples["edgesim_subscriptions"][0][1] == 1.0
    states = {labels["state"]: v for labels, v in samples["edgesim_trust_propagation_state"]}
    assert states["active"] == 1.0
    assert samples["edgesim_trust_last_propagation_timestamp_seconds"][0][1] > 0
    # The OpenAPI document lists /metrics like every other route.
    _, doc, _ = _get(edge.admin_url + "/v1/openapi.json", None)
    assert "/metrics" in json.loads(doc)["paths"]


def test_the_grafana_dashboard_uses_only_metrics_the_edge_exports(edge: Any, device: Any) -> None:
    device("dev-g", protocol="mqtt")
    _, body, _ = _get(edge.admin_url + "/metrics", edge.admin_token)
    exported = set(_samples(body))
    dashboard = json.loads(
        (Path(__file__).parents[2] / "docs" / "grafana" / "edgesim-dashboard.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bedgesim_[a-z_]+", target["expr"])
    }
    assert len(used) >= 14
    assert used <= exported, used - exported
