"""``edgesim fleet run`` and ``edgesim fleet merge``.

``run`` plans a fleet from a device manifest (every device its own certificate),
injects faults (:mod:`devices.faults`), runs it open-loop (:mod:`devices.fleet`) in
one or several processes with a live progress display on stderr, and writes the
JSON and HTML reports. Exit status: 0 when every device ended as expected, 1 when
one did not (a fidelity failure: a faulty device accepted or refused for another
reason, a healthy device refused or failed) or an input is bad, 2 on usage errors.

``merge`` adds the reports of ``--shard K/N`` runs into one (exactly: the HDR
histograms travel encoded in the JSON). With ``--cluster nats://... --run ID`` the
shards also publish their counters and reports on NATS, and ``watch`` follows them
live and merges the reports the same way (:mod:`devices.fleetbus`, imported only
then).

Revoked devices: the fleet writes the CRL revoking them to
``WORK_DIR/revoked-crl.pem``; the edge must load it before the run (Mosquitto:
``crlfile``; the edge: ``--admin URL --token T`` uploads it with
``POST URL/v1/sets/SET/crls``). ``--prepare`` issues the faulty material and the CRL
and stops, so that the edge can be started with the CRL; later runs with the same
``--work-dir`` reuse that material (and so stay covered by that CRL), unless the
devices' CA has changed since (a new PKI): then it is issued anew. For a fleet
spread over machines, prepare once without ``--shard`` and copy the work directory.

Errors: :class:`~devices.fleet.FleetError`, :class:`~devices.faults.FaultError`,
:class:`~devices.report.ReportError` and :class:`~devices.scenario.ScenarioError`
are translated to :class:`certs.cliutil.CliError` here, at the command boundary.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certs.cliutil import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CliError, emit, say
from devices.faults import NEEDS_CA, FaultError, FaultMaker, parse_faults, select_faults
from devices.fleet import (
    FleetError,
    FleetJob,
    RunnerSettings,
    Shard,
    load_manifest,
    pick_urls,
    plan_fleet,
    protocol_of,
    run_processes,
)
from devices.html import render_html
from devices.progress import ProgressDisplay, Snapshot
from devices.report import FleetReport, ReportError, load_report, merge_reports, summary_table
from devices.scenario import ScenarioError, load_scenario

if TYPE_CHECKING:
    from devices.fleetbus import ShardPublisher

#: Defaults applied after the scenario file and the command line.
DEFAULTS: dict[str, Any] = {
    "protocol": None,
    "ramp": "100/s",
    "qos": 0,
    "payload_size": 32,
    "faults": "",
    "seed": 1,
    "processes": 1,
    "shard": "1/1",
    "timeout": 10.0,
    "probe_message": False,
    "work_dir": ".edgesim/fleet",
    "crl_set": "default",
    "loop": "uvloop",
    "topic": "devices/{id}/fleet",
    "mqtt_version": "3.1.1",
    "tls_keys": "legacy",
    "verify_cache": "on",
}


def add_fleet_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``merge`` to the ``fleet`` group's subparsers."""
    run = verbs.add_parser(
        "run",
        help="run a simulated fleet against an edge",
        description=(
            "Run a fleet open-loop: device i starts at i/RAMP seconds whatever the others "
            "do, and its latency counts from that scheduled start. When the fleet itself "
            "falls behind (a device started over 50 ms late, or its event loop over 100 ms "
            "late, two windows in a row) it says 'the load generator is the bottleneck: "
            "add --processes or shards' at once and in the report, which also carries the "
            "fleet's CPU per connect and loop lag."
        ),
    )
    src = run.add_argument_group("devices")
    src.add_argument("--manifest", help="devices/manifest.jsonl (default: PKI/devices/...)")
    src.add_argument("--pki", help="a directory made by `edgesim pki quickstart`")
    src.add_argument("--devices", type=int, help="fleet size (default: the whole manifest)")
    src.add_argument("--ca-cert", help="the CA that issued the devices (for faulty ones)")
    src.add_argument("--ca-key", help="its private key")
    tgt = run.add_argument_group("target")
    tgt.add_argument(
        "--url",
        action="append",
        help="mqtts://H:P, https://H:P, wss://H:P/mqtt or /ws; once per protocol",
    )
    tgt.add_argument("--ca", help="the CA the devices trust for the edge (default: PKI root)")
    tgt.add_argument("--sni", help="server name to send (default: the URL's host)")
    tgt.add_argument("--protocol", choices=("mqtt", "https", "wss", "mix"))
    tgt.add_argument("--tls-max", choices=("1.2", "1.3"), help="highest TLS version devices offer")
    tgt.add_argument(
        "--tls-keys",
        choices=("legacy", "provider"),
        help=(
            "how the fleet's own OpenSSL handles EC and RSA keys: legacy (the default) "
            "uses its built-in methods where that is faster (OpenSSL 3.0: about a third "
            "less CPU per handshake, every check still made); provider keeps OpenSSL's "
            "default. The edge is never changed. The report says which was used"
        ),
    )
    tgt.add_argument(
        "--verify-cache",
        choices=("on", "off"),
        help=(
            "on (the default): devices sharing a context verify the edge's chain in full "
            "once per distinct chain and host name and reuse that result (the edge's "
            "CertificateVerify is still checked on every connect; a changed chain is "
            "verified in full); off: every device verifies the whole chain"
        ),
    )
    tgt.add_argument(
        "--mqtt-version",
        choices=("3.1.1", "5", "mix"),
        help=(
            "MQTT version of the devices on MQTT URLs (3.1.1); mix: every other device "
            "speaks 5. MQTT 5 devices count as protocol mqtt5 (wss-mqtt5), and the "
            "report counts reason codes per outcome"
        ),
    )
    load = run.add_argument_group("load")
    load.add_argument("--ramp", help="arrival rate, devices per second: 200/s (default 100/s)")
    load.add_argument(
        "--duration", help="hold every device this long after the last arrival: 30s, 2m"
    )
    load.add_argument(
        "--msg-rate", help="messages per second across the WHOLE fleet while held: 500/s"
    )
    load.add_argument("--qos", type=int, choices=(0, 1, 2))
    load.add_argument("--payload-size", type=int, help="bytes per message (default 32, min 8)")
    load.add_argument(
        "--probe-message",
        action="store_true",
        default=None,
        help="without --duration: each device echoes one message (first_message step)",
    )
    load.add_argument("--timeout", type=float, help="seconds per device connect (default 10)")
    load.add_argument("--topic", help="each device's topic, {id} its id (devices/{id}/fleet)")
    flt = run.add_argument_group("faults")
    flt.add_argument("--faults", help="expired=1%%,wrong-ca=1%%,no-cert=0.5%%,revoked=2,...")
    flt.add_argument("--seed", type=int, help="picks the faulty devices (default 1)")
    flt.add_argument("--work-dir", help="faulty material and CRL (default .edgesim/fleet)")
    flt.add_argument(
        "--prepare",
        action="store_true",
        default=None,
        help="issue faulty material and the CRL, then stop",
    )
    flt.add_argument("--admin", help="edge admin API base URL, to upload the CRL")
    flt.add_argument("--token", help="admin API bearer token")
    flt.add_argument("--crl-set", help="certificate set that receives the CRL (default)")
    flt.add_argument("--now", help="issuing time of faulty certificates, ISO 8601 (default now)")
    dist = run.add_argument_group("distribution")
    dist.add_argument("--processes", type=int, help="local worker processes (default 1)")
    dist.add_argument("--shard", help="run part K of N of a fleet spread over machines: K/N")
    dist.add_argument("--loop", choices=("uvloop", "asyncio"), help="event loop (uvloop)")
    dist.add_argument(
        "--cluster",
        metavar="NATS_URL",
        help=(
            "publish live counters and the final report on NATS (JetStream), for "
            "`edgesim fleet watch` to merge: nats://HOST:4222; needs --run"
        ),
    )
    dist.add_argument("--run", metavar="ID", help="the run id every shard of one fleet shares")
    out = run.add_argument_group("output")
    out.add_argument("--report", help="write the JSON report here")
    out.add_argument("--html", help="write the HTML report here")
    out.add_argument("--scenario", help="TOML file with these options (flags override it)")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(func=cmd_run)

    watch = verbs.add_parser(
        "watch",
        help="follow the shards of a fleet on NATS and write the merged report",
        description=(
            "Show the live progress of every shard started with --cluster URL --run ID, "
            "and once every shard K/N has sent its report, write the merged JSON and HTML "
            "reports (what `fleet merge` makes of the shards' own reports). Exits 1 when "
            "the merged run failed a check, or on timeout, naming the missing shards."
        ),
    )
    watch.add_argument("--cluster", required=True, metavar="NATS_URL", help="nats://HOST:4222")
    watch.add_argument("--run", required=True, metavar="ID", help="the shards' --run id")
    watch.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for every shard (3600)"
    )
    watch.add_argument("--report", help="write the merged JSON report here")
    watch.add_argument("--html", help="write the merged HTML report here")
    watch.add_argument("--json", action="store_true", help="print the merged report as JSON")
    watch.set_defaults(func=cmd_watch)

    merge = verbs.add_parser("merge", help="merge the reports of several shards")
    merge.add_argument("reports", nargs="+", help="JSON reports of `fleet run --shard`")
    merge.add_argument("--report", help="write the merged JSON report here")
    merge.add_argument("--html", help="write the merged HTML report here")
    merge.add_argument("--json", action="store_true", help="print the merged report as JSON")
    merge.set_defaults(func=cmd_merge)


# -- option values ----------------------------------------------------------------

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*(s|m|min))?\s*$")
_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|min|h)?\s*$")


def _on_off(value: object, option: str) -> bool:
    """``on``/``off`` (or a scenario file's true/false) as a bool; a usage error otherwise."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise CliError(f"{option} {value!r}: expected on or off", EXIT_USAGE)


def parse_rate(text: str | float, option: str) -> float:
    """``200/s``, ``1200/m`` or a bare number (per second) -> per second."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE.match(text)
        if m is None:
            raise CliError(f"{option} {text!r}: expected a rate such as 200/s", EXIT_USAGE)
        value = float(m.group(1)) / (60.0 if m.group(2) in ("m", "min") else 1.0)
    if value <= 0:
        raise CliError(f"{option} {text!r}: must be positive", EXIT_USAGE)
    return value


def parse_duration(text: str | float, option: str) -> float:
    """``500ms``, ``30s``, ``2m``, ``1h`` or a bare number of seconds -> seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _TIME.match(text)
        if m is None:
            raise CliError(f"{option} {text!r}: expected a duration such as 30s or 2m", EXIT_USAGE)
        scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
        value = float(m.group(1)) * scale[m.group(2)]
    if value < 0:
        raise CliError(f"{option} {text!r}: must not be negative", EXIT_USAGE)
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the scenario file, then the flags given on the command line."""
    opts = dict(DEFAULTS)
    if args.scenario:
        opts.update(load_scenario(Path(args.scenario)))
    for key, value in vars(args).items():
        if key in ("func", "group_parser", "scenario", "group", "verb") or value is None:
            continue
        opts[key] = value
    return opts


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pki:
    manifest: Path | None
    ca: Path | None
    ca_cert: Path | None
    ca_key: Path | None


def _pki_paths(opts: dict[str, Any]) -> _Pki:
    pki = Path(opts["pki"]) if opts.get("pki") else None

    def pick(key: str, default: str) -> Path | None:
        if opts.get(key):
            return Path(opts[key])
        return pki / default if pki is not None else None

    return _Pki(
        manifest=pick("manifest", "devices/manifest.jsonl"),
        ca=pick("ca", "root-ca.pem"),
        ca_cert=pick("ca_cert", "intermediate-ca.pem"),
        ca_key=pick("ca_key", "intermediate-ca.key"),
    )


@contextmanager
def _translated() -> Iterator[None]:
    """Turn the fleet's own errors into CliError (usage errors keep code 2)."""
    try:
        yield
    except CliError:
        raise
    except (FleetError, FaultError, ScenarioError, ReportError) as exc:
        text = str(exc)
        usage = text.startswith(
            ("--shard", "--ramp", "--devices", "--processes", "faults item", "--run")
        )
        raise CliError(text, EXIT_USAGE if usage else EXIT_CHECK_FAILED) from exc


# -- run ----------------------------------------------------------------------------


def _upload_crl(admin: str, token: str | None, crl_set: str, crl: Path) -> str:
    """POST the CRL to the edge's admin API; returns a note saying what happened."""
    url = f"{admin.rstrip('/')}/v1/sets/{crl_set}/crls"
    headers = {"Content-Type": "application/x-pem-file"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=crl.read_bytes(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"CRL {crl} uploaded to {url} (HTTP {response.status})"
    except urllib.error.HTTPError as exc:
        return f"CRL upload to {url} failed: HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return f"CRL upload to {url} failed: {getattr(exc, 'reason', exc)}"


def cmd_run(args: argparse.Namespace) -> int:
    """``edgesim fleet run``."""
    with _translated():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    opts = _options(args)
    pki = _pki_paths(opts)
    urls: list[str] = list(opts.get("url") or [])
    if not urls:
        raise CliError("give at least one --url (mqtts://, https://, wss://)", EXIT_USAGE)
    for u in urls:
        protocol_of(u)
    protocol = opts["protocol"] or (
        protocol_of(urls[0]) if len({protocol_of(u) for u in urls}) == 1 else "mix"
    )
    chosen = pick_urls(urls, protocol)
    mqtt_version = str(opts["mqtt_version"])
    if mqtt_version not in ("3.1.1", "5", "mix"):
        raise CliError(f"--mqtt-version {mqtt_version!r}: expected 3.1.1, 5 or mix", EXIT_USAGE)
    if mqtt_version != "3.1.1" and not any(
        u.lower().startswith("mqtts://") or u.rstrip("/").endswith("/mqtt") for u in chosen
    ):
        raise CliError(
            f"--mqtt-version {mqtt_version} needs an MQTT URL (mqtts:// or wss://.../mqtt)",
            EXIT_USAGE,
        )
    if pki.manifest is None:
        raise CliError("give --manifest or --pki", EXIT_USAGE)
    entries = load_manifest(pki.manifest)
    size = int(opts.get("devices") or len(entries))
    shard = Shard.parse(str(opts["shard"]))
    _check_cluster(opts)
    ramp = parse_rate(opts["ramp"], "--ramp")
    hold = parse_duration(opts["duration"], "--duration") if opts.get("duration") else None
    msg_rate = parse_rate(opts["msg_rate"], "--msg-rate") if opts.get("msg_rate") else None
    if msg_rate is not None and hold is None:
        raise CliError("--msg-rate needs --duration (devices publish while held)", EXIT_USAGE)
    if int(opts["payload_size"]) < 8:
        raise CliError("--payload-size must be at least 8 (the send time travels in it)")
    processes = int(opts["processes"])
    if processes < 1:
        raise CliError("--processes must be at least 1", EXIT_USAGE)
    now = _now(opts.get("now"))
    shares = parse_faults(str(opts["faults"]))
    faults = select_faults(shares, size, int(opts["seed"]))
    work = Path(opts["work_dir"])
    maker: FaultMaker | None = None
    notes: list[str] = []
    crl_path: Path | None = None
    if faults:
        if NEEDS_CA & set(faults.values()) and (pki.ca_cert is None or pki.ca_key is None):
            raise CliError(
                "faults expired, revoked and wrong-eku need the CA that issues the devices: "
                "give --pki DIR or --ca-cert and --ca-key",
                EXIT_USAGE,
            )
        maker = FaultMaker(ca_cert=pki.ca_cert, ca_key=pki.ca_key, out_dir=work / "faults", now=now)
    # --prepare plans the whole fleet so that every shard finds its material later.
    plan_shard = Shard() if opts.get("prepare") else shard
    devices = plan_fleet(
        entries,
        devices=size,
        urls=chosen,
        ramp=ramp,
        faults=faults,
        shard=plan_shard,
        maker=maker,
    )
    if maker is not None and "revoked" in faults.values():
        crl_path = maker.write_crl(work / "revoked-crl.pem")
        say(
            f"edgesim: wrote the CRL revoking {len(maker.revoked_serials)} device(s) to "
            f"{crl_path}; the edge must load it (mosquitto: crlfile) for 'revoked' to pass"
        )
        if opts.get("admin"):
            note = _upload_crl(opts["admin"], opts.get("token"), str(opts["crl_set"]), crl_path)
            say("edgesim: " + note)
            notes.append(note)
        else:
            notes.append(
                f"CRL written to {crl_path}; not uploaded (no --admin): the edge must "
                "have loaded it, otherwise revoked devices are accepted"
            )
    if opts.get("prepare"):
        kinds: dict[str, int] = {}
        for kind in faults.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        emit(
            {
                "work_dir": str(work),
                "crl": str(crl_path) if crl_path else None,
                "faults": kinds,
                "devices": size,
            },
            as_json=bool(args.json),
            human=lambda d: (
                f"prepared {sum(d['faults'].values())} faulty device(s) of {d['devices']} "
                f"in {d['work_dir']}" + (f"; CRL {d['crl']}" if d["crl"] else "")
            ),
        )
        return EXIT_OK
    if pki.ca is None:
        raise CliError("give --ca (the CA that signed the edge's certificate) or --pki", EXIT_USAGE)
    job = FleetJob(
        devices=tuple(devices),
        fleet_size=size,
        settings=RunnerSettings(
            ca=pki.ca,
            sni=opts.get("sni"),
            qos=int(opts["qos"]),
            payload_size=int(opts["payload_size"]),
            device_timeout=float(opts["timeout"]),
            probe_message=bool(opts["probe_message"]),
            tls_max=opts.get("tls_max"),
            tls_keys=str(opts["tls_keys"]),
            verify_cache=_on_off(opts["verify_cache"], "--verify-cache"),
            topic=str(opts["topic"]),
            mqtt_version=mqtt_version,
        ),
        hold=hold,
        msg_rate=msg_rate,
        shard=shard,
        started_iso=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        # The whole fleet's last arrival: every shard holds until the same moment.
        schedule_end=(size - 1) / ramp,
        loop=str(opts["loop"]),
    )
    publisher = _publisher(opts, shard)
    try:
        report = _execute(job, processes, publisher)
    except BaseException:
        if publisher is not None:
            publisher.close()
        raise
    for note in notes:
        report.note(note)
    revoked = report.fidelity.get("revoked")
    if revoked is not None and revoked.got.get("connected"):
        report.note(
            f"{revoked.got['connected']} revoked device(s) were accepted: the edge has not "
            f"loaded the CRL ({crl_path})"
        )
    unexplained = sum(
        f.got.get("closed-by-edge", 0) for kind, f in report.fidelity.items() if kind != "none"
    )
    if unexplained and opts.get("tls_max") != "1.2":
        report.note(
            f"{unexplained} faulty device(s) saw the connection closed without an alert. "
            "With TLS 1.3 the verdict comes after the device has sent its first bytes; a "
            "server that closes with them unread (Mosquitto) makes the kernel send a RST "
            "that can destroy the alert. --tls-max 1.2 puts the verdict inside the handshake."
        )
    doc = report.to_json()
    _write_outputs(doc, opts.get("report"), opts.get("html"))
    if publisher is not None:
        try:
            chunks = publisher.final(doc)
            say(
                f"edgesim: shard {shard} report published on {publisher.url} "
                f"(run {publisher.run}, {chunks} message(s))"
            )
            for error in publisher.errors:
                say(f"edgesim: NATS: {error}")
        finally:
            publisher.close()
    emit(doc, as_json=bool(args.json), human=summary_table)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _check_cluster(opts: dict[str, Any]) -> None:
    # Before any work: --cluster and --run go together.
    if opts.get("run") and not opts.get("cluster"):
        raise CliError("--run names a run on NATS: give --cluster nats://... too", EXIT_USAGE)
    if opts.get("cluster") and not opts.get("run"):
        raise CliError("--cluster needs --run ID (the same on every shard)", EXIT_USAGE)


def _publisher(opts: dict[str, Any], shard: Shard) -> ShardPublisher | None:
    """The NATS publisher for ``--cluster`` (imported only then: see devices.fleetbus)."""
    url = opts.get("cluster")
    if not url:
        return None
    from devices.fleetbus import ShardPublisher

    return ShardPublisher(str(url), str(opts["run"]), shard)


def _now(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--now {text!r}: expected an ISO 8601 time", EXIT_USAGE) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _execute(job: FleetJob, processes: int, publisher: ShardPublisher | None = None) -> FleetReport:
    display = ProgressDisplay(sys.stderr)
    last: list[tuple[Snapshot, float]] = []

    def on_tick(snap: Snapshot, elapsed: float) -> None:
        last[:] = [(snap, elapsed)]
        display.update(snap, elapsed)
        if publisher is not None:
            publisher.progress(snap, elapsed)

    begin = time.monotonic()
    report = run_processes(job, processes, on_tick=on_tick)
    if last:
        display.update(last[0][0], time.monotonic() - begin, final=True)
    return report


def _write_outputs(doc: dict[str, Any], report: str | None, html: str | None) -> None:
    try:
        if report:
            Path(report).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
            say(f"edgesim: report written to {report}")
        if html:
            Path(html).write_text(render_html(doc), encoding="utf-8")
            say(f"edgesim: HTML report written to {html}")
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from exc


# -- merge --------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    """``edgesim fleet watch``."""
    import asyncio

    from devices.fleetbus import watch

    display = ProgressDisplay(sys.stderr)
    shown: dict[int, str] = {}

    def on_progress(total: Snapshot, elapsed: float, states: dict[int, str]) -> None:
        for k, state in states.items():
            if shown.get(k) != state:
                shown[k] = state
                say(f"edgesim: shard {k}: {state}")
        display.update(total, elapsed)

    with _translated():
        result = asyncio.run(
            watch(args.cluster, args.run, timeout=args.timeout, on_progress=on_progress)
        )
        reports = [
            FleetReport.from_json(result.reports[k], source=f"shard {k}/{result.shards}")
            for k in sorted(result.reports)
        ]
        merged = merge_reports(reports)
        doc = merged.to_json()
        say(f"edgesim: run {args.run}: all {result.shards} shard report(s) merged")
        _write_outputs(doc, args.report, args.html)
        emit(doc, as_json=bool(args.json), human=summary_table)
        return EXIT_OK if merged.ok else EXIT_CHECK_FAILED


def cmd_merge(args: argparse.Namespace) -> int:
    """``edgesim fleet merge``."""
    with _translated():
        merged = merge_reports(load_report(Path(p)) for p in args.reports)
        doc = merged.to_json()
        _write_outputs(doc, args.report, args.html)
        emit(doc, as_json=bool(args.json), human=summary_table)
        return EXIT_OK if merged.ok else EXIT_CHECK_FAILED
