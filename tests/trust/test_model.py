"""TrustSnapshot resolution and its explanations, on hand-built snapshots (no store)."""

from __future__ import annotations

import pytest

from edge.trust.model import ActiveSet, Finding, TrustSnapshot, normalize_host


def active(name: str) -> ActiveSet:
    return ActiveSet(
        name=name, version=1, ca_certs=(), ca_pem=b"", crls=(), crl_pem=b"", allow_sha1=False
    )


SNAP = TrustSnapshot(
    7,
    {"exact": active("exact"), "wild": active("wild"), "default": active("default")},
    {
        "a.example.com": "exact",
        "*.example.com": "wild",
        "*": "default",
        "gone.example.org": "inactive",
    },
)


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("a.example.com", "exact"),
        ("A.EXAMPLE.COM.", "exact"),
        ("b.example.com", "wild"),
        ("example.com", "default"),
        ("x.b.example.com", "default"),
        ("other.test", "default"),
        ("", "default"),
        (None, "default"),
    ],
)
def test_exact_then_wildcard_then_default(sni: str | None, expected: str) -> None:
    found = SNAP.resolve(sni)
    assert found is not None
    assert found.name == expected


def test_a_bound_set_without_active_version_resolves_to_nothing() -> None:
    assert SNAP.resolve("gone.example.org") is None
    assert SNAP.explain_unbound("gone.example.org") == (
        "certificate set 'inactive' (via binding 'gone.example.org') has no active version; "
        "activate one with 'edgesim trust activate inactive VERSION'"
    )


def test_explanations_without_default_binding() -> None:
    snap = TrustSnapshot(1, {}, {})
    assert snap.explain_unbound(None) == (
        "the device sent no SNI and there is no default binding; "
        "bind a set with 'edgesim trust bind NAME --default'"
    )
    assert snap.explain_unbound("Dev.Example") == (
        "hostname 'dev.example' is not bound to a certificate set and there is no default "
        "binding; bind one with 'edgesim trust bind NAME --host dev.example'"
    )


@pytest.mark.parametrize(
    ("host", "normalized"),
    [("Dev.Example.COM.", "dev.example.com"), ("*.Example.com", "*.example.com"), ("*", "*")],
)
def test_normalize_host(host: str, normalized: str) -> None:
    assert normalize_host(host) == normalized


def test_finding_text_and_dict() -> None:
    finding = Finding(
        severity="error",
        code="expired",
        message="certificate 2 (CN=x) expired",
        position=2,
        subject="CN=x",
        hint="renew it",
    )
    assert str(finding) == "certificate 2 (CN=x) expired hint: renew it"
    assert finding.to_dict() == {
        "severity": "error",
        "code": "expired",
        "position": 2,
        "subject": "CN=x",
        "message": "certificate 2 (CN=x) expired",
        "hint": "renew it",
    }
