"""``make demo``: the main job, end to end, on one machine.

1. builds a PKI (``edgesim pki quickstart``: root, intermediate, server
   certificate, a few hundred devices);
2. starts an edge on free loopback ports (MQTT, HTTPS + WebSocket, admin API)
   trusting that PKI's chain as certificate set ``default``;
3. gives two hostnames their own server certificates and certificate sets
   (``edgesim cert``: ``devices.example.test`` with an EC certificate and set
   ``default``, ``legacy.example.test`` with an RSA certificate, set ``legacy``
   and no CA names) and connects one device to each (``edgesim device connect
   --sni``);
4. runs a mixed fleet over all three protocols (MQTT, HTTPS, MQTT over
   WebSocket and the ``/ws`` JSON protocol) with a few percent of faulty devices
   (expired, from another CA, without a certificate, revoked, without clientAuth)
   for about a minute, checking that each faulty device is refused for the right
   reason;
5. prints the fleet's summary and the paths of its JSON and HTML reports, and
   stops the edge.

Everything goes through the ``edgesim`` command line in child processes, as a
user would run it, so the demo also shows the commands. Output lands in
``.edgesim/demo/`` (``--out`` to change it). Exit status: the fleet's (0 when
every device behaved as expected, 1 on a fidelity failure), or 1 when the edge
could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

EDGESIM = [sys.executable, "-m", "edge.cli"]


def _show(cmd: list[str]) -> None:
    shown = ["edgesim", *cmd[len(EDGESIM) :]] if cmd[: len(EDGESIM)] == EDGESIM else cmd
    print("$ " + shlex.join(shown), flush=True)


def _run(cmd: list[str]) -> None:
    _show(cmd)
    subprocess.run(cmd, check=True)


def _read_json_document(stream: Any, proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Read lines from ``stream`` until they form one JSON document (the edge's ports)."""
    text = ""
    for line in stream:
        text += line
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            return doc
    raise RuntimeError(f"the edge exited (status {proc.wait()}) before reporting its ports")


def _hostnames(pki: Path, mqtt: int, admin: str, env: dict[str, str]) -> None:
    """Two hostnames, each with its own server certificate and certificate set."""
    print("\n== 3. two hostnames, each with its own server certificate and set", flush=True)
    where = ["--admin", admin]  # the token comes from $EDGESIM_ADMIN_TOKEN

    def run(*args: str) -> None:
        cmd = [*EDGESIM, *args]
        _show(cmd)
        subprocess.run(cmd, check=True, env=env)

    # The legacy set trusts the root alone: its devices send their intermediate.
    run("trust", "upload", "legacy", str(pki / "root-ca.pem"), *where)
    run("cert", "issue", "devices", "--host", "devices.example.test", "--pki", str(pki), *where)
    run("cert", "issue", "legacy", "--host", "legacy.example.test", "--key-type", "rsa2048",
        "--pki", str(pki), *where)  # fmt: skip
    run("cert", "deploy", "devices", "--set", "default", "--wait", *where)
    run("cert", "deploy", "legacy", "--set", "legacy", "--no-ca-names", "--wait", *where)
    run("cert", "list", *where)
    device = pki / "devices" / "dev-00000"
    for host in ("devices.example.test", "legacy.example.test"):
        run("device", "connect", "--url", f"mqtts://127.0.0.1:{mqtt}", "--sni", host,
            "--cert", f"{device}.pem", "--key", f"{device}.key",
            "--chain", str(pki / "devices" / "chain.pem"), "--ca", str(pki / "root-ca.pem"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the fleet's exit status."""
    parser = argparse.ArgumentParser(prog="python -m devices.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".edgesim/demo"), help="output folder")
    parser.add_argument("--devices", type=int, default=300, help="fleet size (default 300)")
    parser.add_argument("--ramp", default="10/s", help="arrival rate (default 10/s)")
    parser.add_argument("--duration", default="30s", help="hold time after the last arrival")
    parser.add_argument(
        "--faults",
        default="expired=2%,wrong-ca=2%,no-cert=1%,revoked=1%,wrong-eku=1%",
        help="fault mix",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pki = out / "pki"
    state = out / "state"
    # The PKI is made anew on every run, and an edge seeds an empty store only: a
    # store left by an earlier run would still trust that run's CA and refuse
    # every device of this one.
    shutil.rmtree(state, ignore_errors=True)

    print("== 1. a PKI: root CA, intermediate, server certificate, devices", flush=True)
    _run(
        [
            *EDGESIM,
            "pki",
            "quickstart",
            "--out",
            str(pki),
            "--devices",
            str(args.devices),
            "--force",
        ]
    )

    print("\n== 2. an edge on free loopback ports", flush=True)
    edge_cmd = [
        *EDGESIM, "edge", "serve", "--pki", str(pki), "--state-dir", str(state),
        "--mqtt", "127.0.0.1:0", "--https", "127.0.0.1:0",
        "--admin", "127.0.0.1:0", "--json",
    ]  # fmt: skip
    _show(edge_cmd)
    edge = subprocess.Popen(edge_cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert edge.stdout is not None
        try:
            ports = _read_json_document(edge.stdout, edge)["ports"]
        except RuntimeError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        token = (state / "trust.db.token").read_text().strip()
        mqtt, https, admin = ports["mqtt"], ports["https"], ports["admin"]
        print(f"edge listening: mqtts :{mqtt}, https/wss :{https}, admin :{admin}", flush=True)

        admin_env = {**os.environ, "EDGESIM_ADMIN_TOKEN": token}
        _hostnames(pki, mqtt, f"http://127.0.0.1:{admin}", admin_env)

        print("\n== 4. a mixed fleet over MQTT, HTTPS and WebSocket, with faulty devices")
        report, html = out / "report.json", out / "report.html"
        fleet_cmd = [
            *EDGESIM, "fleet", "run", "--pki", str(pki),
            "--url", f"mqtts://127.0.0.1:{mqtt}",
            "--url", f"https://127.0.0.1:{https}",
            "--url", f"wss://127.0.0.1:{https}/mqtt",
            "--url", f"wss://127.0.0.1:{https}/ws",
            "--protocol", "mix", "--devices", str(args.devices), "--ramp", args.ramp,
            "--duration", args.duration, "--msg-rate", "100/s", "--faults", args.faults,
            "--work-dir", str(out / "fleet"), "--admin", f"http://127.0.0.1:{admin}",
            "--report", str(report), "--html", str(html),
        ]  # fmt: skip
        _show([*fleet_cmd, "--token", "..."])
        status = subprocess.run(
            [*fleet_cmd, "--token", token], env={**os.environ, "EDGESIM_ADMIN_TOKEN": token}
        ).returncode
        print(f"\nJSON report: {report}\nHTML report: {html}", flush=True)
        return status
    finally:
        print("\n== 5. stopping the edge", flush=True)
        edge.send_signal(signal.SIGINT)
        try:
            edge.wait(timeout=30)
        except subprocess.TimeoutExpired:
            edge.kill()
            edge.wait()
        if edge.stdout is not None:
            edge.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
