"""The HTML fleet report: one self-contained file, plots drawn here as inline SVG.

No script, no stylesheet or font from the network: the file opens the same on an
air-gapped laptop and in a CI artifact viewer. Input is the JSON report document
(:meth:`devices.report.FleetReport.to_json`), so ``edgesim fleet merge`` can render
merged shards too. Plots:

- connect latency over time (p50, p99 and max per second of the arrival schedule);
- outcomes over time (stacked bars: connected, refused, error);
- outcomes by reason (horizontal bars);

followed by the fidelity table (each fault kind against its expected alert), the MQTT
reason codes per outcome (when MQTT devices ran) and the latency percentiles per step
and per protocol. No errors of its own: every value it
reads was produced by the report module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

_W, _H = 760, 260
_M = {"l": 64, "r": 16, "t": 20, "b": 36}
_COLORS = {"connected": "#2e7d32", "refused": "#c62828", "error": "#ef6c00"}
_SERIES = (("p50_ms", "p50", "#1565c0"), ("p99_ms", "p99", "#6a1b9a"), ("max_ms", "max", "#9e9e9e"))


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** len(str(int(value)))
    for step in (0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= magnitude * step:
            return magnitude * step
    return magnitude


def _axes(x_max: float, y_max: float, x_label: str, y_label: str) -> list[str]:
    x0, y0 = _M["l"], _H - _M["b"]
    x1, y1 = _W - _M["r"], _M["t"]
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>',
    ]
    for i in range(5):
        frac = i / 4
        y = y0 - frac * (y0 - y1)
        x = x0 + frac * (x1 - x0)
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{y_max * frac:.4g}</text>'
        )
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{x_max * frac:.4g}</text>'
        )
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{_H - 4}" text-anchor="middle">{x_label}</text>')
    parts.append(
        f'<text x="14" y="{(y0 + y1) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2})">{y_label}</text>'
    )
    return parts


def _svg(body: Sequence[str], title: str) -> str:
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" font-size="11" font-family="sans-serif">'
        + "".join(body)
        + "</svg></figure>"
    )


def _scale(value: float, vmax: float, lo: float, hi: float) -> float:
    return lo + (value / vmax) * (hi - lo) if vmax else lo


def latency_plot(timeline: Sequence[Mapping[str, Any]]) -> str:
    """Connect latency (ms) per second of the schedule: p50, p99 and max lines."""
    points = [b for b in timeline if b["connect"]["count"]]
    if not points:
        return "<p>No device connected: no latency to plot.</p>"
    x_max = _nice_max(max(b["t"] for b in timeline) + 1)
    y_max = _nice_max(max(b["connect"]["max_ms"] for b in points))
    body = _axes(x_max, y_max, "scheduled start (s)", "connect latency (ms)")
    x0, x1 = _M["l"], _W - _M["r"]
    y0, y1 = _H - _M["b"], _M["t"]
    for n, (key, label, color) in enumerate(_SERIES):
        coords = " ".join(
            f"{_scale(b['t'] + 0.5, x_max, x0, x1):.1f},"
            f"{_scale(b['connect'][key], y_max, y0, y1):.1f}"
            for b in points
        )
        body.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        )
        for b in points:
            cx = _scale(b["t"] + 0.5, x_max, x0, x1)
            cy = _scale(b["connect"][key], y_max, y0, y1)
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2" fill="{color}"/>')
        body.append(f'<text x="{x1 - 120 + 40 * n}" y="{y1 + 4}" fill="{color}">{label}</text>')
    return _svg(body, "Connect latency over time (from each device's scheduled start)")


#: The run-time plots: (series field, title, y label, colour).
_RUN_PLOTS = (
    ("connects", "Connects per second", "connects/s", "#2e7d32"),
    ("messages", "Messages sent per second", "messages/s", "#1565c0"),
    ("errors", "Errors per second (healthy devices that did not connect)", "errors/s", "#c62828"),
    ("cpu_s", "Fleet CPU (cores busy: CPU seconds per second)", "cores", "#6a1b9a"),
    ("loop_lag_ms", "Fleet event-loop lag (worst in each second)", "lag (ms)", "#ef6c00"),
)


def series_plot(
    series: Sequence[Mapping[str, Any]], key: str, title: str, y_label: str, color: str
) -> str:
    """One per-second series of the run (``doc["series"]``) as a line over time."""
    if not series:
        return f"<p>{escape(title)}: no samples.</p>"
    x_max = _nice_max(max(s["t"] for s in series) + 1)
    y_max = _nice_max(max(float(s[key]) for s in series))
    body = _axes(x_max, y_max, "time since the fleet's start (s)", y_label)
    x0, x1 = _M["l"], _W - _M["r"]
    y0, y1 = _H - _M["b"], _M["t"]
    coords = " ".join(
        f"{_scale(s['t'] + 0.5, x_max, x0, x1):.1f},{_scale(float(s[key]), y_max, y0, y1):.1f}"
        for s in series
    )
    body.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    return _svg(body, title)


def run_plots(series: Sequence[Mapping[str, Any]]) -> str:
    """Connects/s, messages/s, errors/s, fleet CPU and loop lag over time."""
    return "\n".join(series_plot(series, k, t, y, c) for k, t, y, c in _RUN_PLOTS)


def outcomes_over_time(timeline: Sequence[Mapping[str, Any]]) -> str:
    """Devices per second of the schedule, stacked by outcome."""
    if not timeline:
        return "<p>No devices.</p>"
    x_max = _nice_max(max(b["t"] for b in timeline) + 1)
    y_max = _nice_max(max(sum(b["outcomes"].values()) for b in timeline))
    body = _axes(x_max, y_max, "scheduled start (s)", "devices")
    x0, x1 = _M["l"], _W - _M["r"]
    y0, y1 = _H - _M["b"], _M["t"]
    width = max((x1 - x0) / x_max * 0.8, 1.0)
    for b in timeline:
        base = 0
        for outcome in ("connected", "refused", "error"):
            n = b["outcomes"].get(outcome, 0)
            if not n:
                continue
            top = _scale(base + n, y_max, y0, y1)
            bottom = _scale(base, y_max, y0, y1)
            x = _scale(b["t"], x_max, x0, x1)
            body.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                f'height="{bottom - top:.1f}" fill="{_COLORS[outcome]}">'
                f"<title>{b['t']} s: {n} {outcome}</title></rect>"
            )
            base += n
    for n, outcome in enumerate(("connected", "refused", "error")):
        body.append(
            f'<text x="{x1 - 200 + 70 * n}" y="{y1 + 4}" fill="{_COLORS[outcome]}">{outcome}</text>'
        )
    return _svg(body, "Outcomes over time")


def outcomes_by_reason(outcomes: Mapping[str, Mapping[str, int]]) -> str:
    """One horizontal bar per (outcome, reason)."""
    rows = [(o, r, n) for o, reasons in outcomes.items() for r, n in reasons.items()]
    if not rows:
        return "<p>No devices.</p>"
    height = 24 * len(rows) + 30
    n_max = max(n for _, _, n in rows)
    left, right = 220, _W - 80
    body = []
    for i, (outcome, reason, n) in enumerate(rows):
        y = 10 + 24 * i
        w = max((n / n_max) * (right - left), 1.0)
        body.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">'
            f"{escape(outcome)}: {escape(reason)}</text>"
        )
        body.append(
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="18" '
            f'fill="{_COLORS.get(outcome, "#555")}"/>'
        )
        body.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}">{n}</text>')
    return (
        "<figure><figcaption>Outcomes by reason</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" font-size="11" font-family="sans-serif">'
        + "".join(body)
        + "</svg></figure>"
    )


def reason_code_table(codes: Mapping[str, Mapping[str, int]]) -> str:
    """The MQTT reason codes per outcome (empty when no MQTT device reported one)."""
    rows = "".join(
        f"<tr><th>{escape(outcome)}</th><td>{escape(label)}</td>{_cell(n)}</tr>"
        for outcome, by_code in codes.items()
        for label, n in by_code.items()
    )
    if not rows:
        return ""
    return (
        "<h2>MQTT reason codes</h2>"
        "<table><tr><th>outcome</th><th>packet and reason code</th><th>devices</th></tr>"
        f"{rows}</table>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, float):
        return f"<td>{value:.3f}</td>"
    return f"<td>{escape(str(value))}</td>"


def _latency_rows(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    head = "<tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>"
    body = "".join(
        f"<tr><th>{escape(label)}</th>"
        + "".join(
            _cell(s[k]) for k in ("count", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")
        )
        + "</tr>"
        for label, s in rows
    )
    return f"<table>{head}{body}</table>"


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole report page for a report document."""
    verdict = "OK" if doc["ok"] else "FAILED"
    fidelity_rows = "".join(
        f'<tr class="{"ok" if f["ok"] else "bad"}"><th>{escape(kind)}</th>'
        f"<td>{escape(' | '.join(f['expected']))}</td>{_cell(f['devices'])}{_cell(f['matched'])}"
        f"<td>{escape(', '.join(f'{k}={v}' for k, v in f['got'].items()))}</td>"
        f"<td>{'ok' if f['ok'] else 'FAIL'}</td></tr>"
        for kind, f in doc["fidelity"].items()
    )
    latency = doc["latency"]
    rows: list[tuple[str, Mapping[str, Any]]] = [("connect (from schedule)", latency["connect"])]
    rows += [(f"step {name}", s) for name, s in latency["steps"].items()]
    rows += [(f"protocol {p}", v["connect"]) for p, v in doc["protocols"].items()]
    rows += [("start lag", latency["start_lag"]), ("delivery", doc["messages"]["delivery"])]
    notes = "".join(f"<li>{escape(n)}</li>" for n in doc["notes"])
    # Reports written before the fleet watched itself have neither.
    generator = doc.get("generator") or {}
    per_connect = generator.get("cpu_ms_per_connect")
    gen_line = (
        f"<p>Fleet CPU {generator.get('cpu_s', 0):.2f} s"
        f"{f', {per_connect:.2f} ms per connect' if per_connect is not None else ''}; "
        f"worst event-loop lag {generator.get('loop_lag_max_ms', 0):.1f} ms.</p>"
        if generator
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edgesim fleet report: {verdict}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:64em}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
tr.bad{{background:#ffebee}} tr.ok{{background:#f1f8e9}}
figcaption{{font-weight:bold;margin:1em 0 .3em}}
.verdict{{font-size:1.4em;color:{"#2e7d32" if doc["ok"] else "#c62828"}}}
</style></head><body>
<h1>edgesim fleet report</h1>
<p class="verdict">{verdict}: {doc["devices"]} devices, shards {escape(", ".join(doc["shards"]) or "-")},
started {escape(doc["started"] or "-")}, {doc["duration_s"]:.1f} s</p>
{"<ul>" + notes + "</ul>" if notes else ""}
<h2>Fidelity</h2>
<table><tr><th>fault</th><th>expected</th><th>devices</th><th>matched</th><th>got</th><th></th></tr>
{fidelity_rows}</table>
{reason_code_table(doc.get("reason_codes") or {})}
<h2>Latency (ms)</h2>
{_latency_rows(rows)}
<p>Messages sent {doc["messages"]["sent"]}, received {doc["messages"]["received"]}.</p>
<h2>The load over time</h2>
{gen_line}
{run_plots(doc.get("series") or [])}
<h2>Plots</h2>
{latency_plot(doc["timeline"])}
{outcomes_over_time(doc["timeline"])}
{outcomes_by_reason(doc["outcomes"])}
</body></html>
"""
