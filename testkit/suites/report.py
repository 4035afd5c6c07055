"""Suite reports: the JSON document, JUnit XML for CI, and an HTML page.

All three are rendered from the JSON document (:meth:`SuiteReport.to_json`), so a
saved report can be re-rendered. The HTML page follows the fleet report's style
(:mod:`devices.html`): one self-contained file, no script, no network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any
from xml.etree import ElementTree as ET

__all__ = ["render_html", "render_json", "render_junit"]


def render_json(doc: Mapping[str, Any]) -> str:
    """The JSON report, indented."""
    return json.dumps(doc, indent=2, default=str) + "\n"


def render_junit(doc: Mapping[str, Any]) -> str:
    """JUnit XML: one ``testcase`` per case; ``must`` failures are ``failure``s.

    Informational cases that failed are reported as passed with their summary in
    ``system-out`` (CI must not go red for them); skipped cases are ``skipped``.
    """
    cases = doc["cases"]
    failures = sum(1 for c in cases if c["must"] and c["status"] == "fail")
    errors = sum(1 for c in cases if c["must"] and c["status"] == "error")
    skipped = sum(1 for c in cases if c["status"] == "skip")
    suite = ET.Element(
        "testsuite",
        name=f"edgesim.suite.{doc['suite']}",
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skipped),
        time=f"{doc['duration_s']:.3f}",
        timestamp=str(doc["started"]),
    )
    for c in cases:
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"edgesim.suite.{doc['suite']}",
            name=c["id"],
            time=f"{c['duration_s']:.3f}",
        )
        evidence = json.dumps(c["evidence"], indent=1, default=str)
        if c["status"] == "skip":
            ET.SubElement(tc, "skipped", message=c["summary"])
        elif c["must"] and c["status"] == "fail":
            ET.SubElement(tc, "failure", message=c["summary"], type="DeviceFailed").text = evidence
        elif c["must"] and c["status"] == "error":
            ET.SubElement(tc, "error", message=c["summary"], type="CaseError").text = evidence
        ET.SubElement(tc, "system-out").text = f"{c['status'].upper()}: {c['summary']}\n{evidence}"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


_ROW = {"pass": "ok", "info": "info", "skip": "skip", "fail": "bad", "error": "bad"}


def _packets(case: Mapping[str, Any]) -> str:
    rows = []
    for conn in case["evidence"].get("connections", []):
        head = (
            f"#{conn['index']} at {conn['opened_s']:.3f} s: {conn['tls_version'] or 'no TLS session'}"
            f"{', alert ' + conn['alert_from_device'] if conn['alert_from_device'] else ''}"
            f", {conn['bytes_from_device']} B in / {conn['bytes_to_device']} B out"
            f", {conn['app_bytes_from_device']} app bytes, closed by {conn['closed_by'] or '-'}"
        )
        pk = " ".join(
            f"{p['t']:.3f}{'&gt;' if p['dir'] == 'in' else '&lt;'}{escape(p['packet'])}"
            for p in conn["packets"][:40]
        )
        rows.append(f"<li>{escape(head)}{'<br><code>' + pk + '</code>' if pk else ''}</li>")
    return "<ul>" + "".join(rows) + "</ul>" if rows else ""


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole report page for a suite report document."""
    verdict = "OK" if doc["ok"] else "FAILED"
    counts = ", ".join(f"{v} {k}" for k, v in doc["counts"].items() if v)
    rows = "".join(
        f'<tr class="{_ROW[c["status"]]}"><th>{escape(c["id"])}</th><td>{escape(c["title"])}</td>'
        f"<td>{escape(c['expect'])}</td><td>{'must' if c['must'] else 'info'}</td>"
        f"<td>{c['status'].upper()}</td><td class=l>{escape(c['summary'])}"
        f"{_packets(c)}</td></tr>"
        for c in doc["cases"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edgesim suite report: {escape(doc["suite"])} {verdict}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:80em}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}}
td.l{{text-align:left}} code{{font-size:.8em}}
tr.bad{{background:#ffebee}} tr.ok{{background:#f1f8e9}} tr.info{{background:#e3f2fd}} tr.skip{{color:#777}}
.verdict{{font-size:1.4em;color:{"#2e7d32" if doc["ok"] else "#c62828"}}}
</style></head><body>
<h1>edgesim device suite: {escape(doc["suite"])}</h1>
<p class="verdict">{verdict}: {escape(counts)}; {doc["duration_s"]:.1f} s, started {escape(str(doc["started"]))}</p>
<p>{escape(doc["description"])}<br>Device: <code>{escape(doc["device_cmd"] or "bench device")}</code>, endpoint {escape(doc["endpoint"])}</p>
<h2>Cases</h2>
<table><tr><th>case</th><th>title</th><th>expect</th><th></th><th>verdict</th><th>evidence</th></tr>
{rows}</table>
</body></html>
"""
