"""``edgesim edge serve``: run the edge until SIGINT or SIGTERM.

With no flags: an embedded quickstart PKI and a trust store under ``./.edgesim/``
(created on first start, reused after), MQTT over mutual TLS on
``127.0.0.1:8883`` and the admin API on ``127.0.0.1:8081``. ``--config edge.toml``
sets everything (see :mod:`edge.config`); the flags override it. Ports may be 0:
the edge reports the ports it bound on stderr, in ``--json`` output and in the
``--ready-file`` (JSON, written atomically once every listener is up).

Scaling out: ``--workers N`` (or ``auto``: one per core) runs a supervisor and N
worker processes sharing the device ports (SO_REUSEPORT); without ``--cluster`` the
supervisor starts a nats-server on loopback for the bus between them. ``--cluster
nats://HOST:PORT[,...]`` joins this node's workers to edge nodes on other machines
through that NATS cluster (give each node its own ``--node-id``). The admin API runs
in worker 0 and shows every worker's events. Needs the ``edgesim[cluster]`` extra.

Exit status: 0 after a graceful stop, 1 when the edge cannot start (a port in
use, a bad certificate...), 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from certs.cliutil import EXIT_OK, EXIT_USAGE, CliError, emit, say
from edge._loader import status as compiled_status
from edge.config import EdgeConfig, EdgeConfigError, load_config, parse_host_port
from edge.core.events import EventLog
from edge.core.handlers import HandlerRegistry
from edge.logs import LOG_FORMATS, configure_logging, log_events_as_json
from edge.mqtt.profiles import PROFILES, apply_profile
from edge.server import EdgeServer, EdgeServerError, new_event_loop

__all__ = ["build_config", "load_handlers", "register"]


def register(subparsers: Any) -> None:
    """Add the ``edge`` group with its ``serve`` verb."""
    group = subparsers.add_parser("edge", help="run the edge", description="Run the edge.")
    group.set_defaults(group_parser=group)
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="run the edge until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="an edge.toml")
    serve.add_argument("--mqtt", metavar="HOST:PORT", help="MQTT over TLS listener (off: none)")
    serve.add_argument("--https", metavar="HOST:PORT", help="device HTTPS + WebSocket listener")
    serve.add_argument("--multi", metavar="HOST:PORT", help="MQTT and HTTPS on one port")
    serve.add_argument("--admin", metavar="HOST:PORT", help="admin API listener (off: none)")
    serve.add_argument("--store", type=Path, metavar="PATH", help="trust store file")
    serve.add_argument(
        "--pki", type=Path, metavar="DIR", help="a folder from `edgesim pki quickstart`"
    )
    serve.add_argument("--state-dir", type=Path, metavar="DIR", help="default: ./.edgesim")
    serve.add_argument("--policy", choices=("open", "default"), help="access policy preset")
    serve.add_argument("--ready-file", type=Path, metavar="PATH", help="write bound ports here")
    serve.add_argument("--json", action="store_true", help="print the bound ports as JSON")
    serve.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    serve.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="topic handlers to run: a function taking a HandlerRegistry, or a HandlerRegistry "
        "(repeatable; e.g. edge.services.ota:setup)",
    )
    serve.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="answer MQTT like a production broker: its limits, codes and CONNACK "
        "(edge.mqtt.profiles has the table and its sources)",
    )
    serve.add_argument(
        "--persistence",
        metavar="on|off|PATH",
        help="durable MQTT sessions, in-flight and queued messages and retained messages "
        "(default on, in <trust store>.mqtt; PATH: that SQLite file; off: kept in memory only)",
    )
    serve.add_argument(
        "--workers",
        metavar="N|auto",
        type=_workers,
        help="run N worker processes sharing the device ports (auto: one per core); "
        "without --cluster a local nats-server carries messages between them",
    )
    serve.add_argument(
        "--cluster",
        metavar="nats://HOST:PORT[,...]",
        help="join edge nodes through this NATS cluster (cross-node delivery, session "
        "takeover, events); implies one worker unless --workers says more",
    )
    serve.add_argument(
        "--node-id",
        metavar="ID",
        help="this node's name in the cluster (default: the host name); each node needs its own",
    )
    # Set by the supervisor for the processes it starts: run as worker I.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    # Set with it when the supervisor started the nats-server itself (one machine).
    serve.add_argument("--local-bus", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("-v", "--verbose", action="store_true", help="log every event")
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, events with all their fields",
    )
    serve.set_defaults(func=_serve)


def build_config(args: argparse.Namespace) -> EdgeConfig:
    """Turn ``edge serve`` arguments into an :class:`EdgeConfig` (file, then flags)."""
    try:
        cfg = load_config(args.config) if args.config else EdgeConfig()
        listeners = cfg.listeners
        for kind in ("mqtt", "https", "multi", "admin"):
            value = getattr(args, kind)
            if value is not None:
                listeners = _replace(listeners, kind, parse_host_port(value, where=f"--{kind}"))
    except EdgeConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    changes: dict[str, Any] = {"listeners": listeners}
    if args.store is not None:
        changes["trust"] = replace(cfg.trust, store=args.store)
    if args.pki is not None:
        if not args.pki.is_dir():
            raise CliError(f"--pki {args.pki}: not a folder", EXIT_USAGE)
        changes["pki_dir"] = args.pki
    if args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    if args.policy is not None:
        changes["policy"] = args.policy
    if args.ready_file is not None:
        changes["ready_file"] = args.ready_file
    if args.no_uvloop:
        changes["use_uvloop"] = False
    persistence = getattr(args, "persistence", None)
    if persistence is not None:
        if persistence in ("on", "off"):
            changes["persistence"] = replace(cfg.persistence, enabled=persistence == "on")
        elif persistence:
            changes["persistence"] = replace(cfg.persistence, enabled=True, path=Path(persistence))
        else:
            raise CliError("--persistence: expected on, off or a file path", EXIT_USAGE)
    if getattr(args, "profile", None):
        changes["mqtt"] = apply_profile(cfg.mqtt, args.profile)
    return cfg.with_overrides(**changes)


def load_handlers(specs: list[str]) -> HandlerRegistry:
    """Build the handler registry from ``MODULE:ATTR`` specs (``--handlers``).

    ATTR names a function called with the registry (to register its handlers) or a
    :class:`HandlerRegistry` (at most one: it becomes the registry the others add to).
    """
    registry: HandlerRegistry | None = None
    setups = []
    for spec in specs:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise CliError(f"--handlers {spec!r}: expected MODULE:ATTR", EXIT_USAGE)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CliError(f"--handlers {spec!r}: cannot import {module_name}: {exc}") from None
        try:
            target = getattr(module, attr)
        except AttributeError:
            raise CliError(f"--handlers {spec!r}: {module_name} has no {attr!r}") from None
        if isinstance(target, HandlerRegistry):
            if registry is not None:
                raise CliError(
                    f"--handlers {spec!r}: only one HandlerRegistry may be given; "
                    "name a setup function for the others"
                )
            registry = target
        elif callable(target):
            setups.append((spec, target))
        else:
            raise CliError(f"--handlers {spec!r}: neither a function nor a HandlerRegistry")
    registry = registry if registry is not None else HandlerRegistry()
    for spec, setup in setups:
        try:
            setup(registry)
        except Exception as exc:
            raise CliError(f"--handlers {spec!r}: setup failed: {exc}") from None
    return registry


def _replace(obj: Any, name: str, value: Any) -> Any:
    return replace(obj, **{name: value})


def _workers(text: str) -> int:
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"{count} is out of range 1-256")
    return count


def _cluster_urls(text: str | None) -> list[str]:
    if text is None:
        return []
    urls = [u.strip() for u in text.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("nats://", "tls://")) or ":" not in url.split("//", 1)[1]:
            raise CliError(f"--cluster {url!r}: expected nats://HOST:PORT", EXIT_USAGE)
    if not urls:
        raise CliError("--cluster: no URL given", EXIT_USAGE)
    return urls


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The ``edge serve`` arguments a supervisor passes on to each worker."""
    out: list[str] = []
    for flag in ("config", "store", "pki", "state_dir", "policy", "profile", "persistence"):
        value = getattr(args, flag, None)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    for spec in args.handlers:
        out += ["--handlers", spec]
    if args.no_uvloop:
        out.append("--no-uvloop")
    if args.verbose:
        out.append("--verbose")
    out += ["--log-format", args.log_format]
    return out


def _serve(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    handlers = load_handlers(args.handlers)
    configure_logging(args.log_format, verbose=args.verbose)
    urls = _cluster_urls(args.cluster)
    worker_index = args.worker_index
    if worker_index is None and (args.workers is not None or urls):
        return _supervise(args, cfg, urls)
    server_options: dict[str, Any] = {}
    if worker_index is not None:
        if not urls:
            raise CliError("--worker-index needs --cluster", EXIT_USAGE)
        try:
            from edge.cluster.worker import worker_server_options
        except ImportError as exc:
            raise CliError(f"workers need the edgesim[cluster] extra: {exc}") from None
        server_options = worker_server_options(
            urls,
            node=args.node_id or socket.gethostname(),
            index=worker_index,
            local=args.local_bus,
        )
    loop = new_event_loop(cfg.use_uvloop)
    try:
        return loop.run_until_complete(
            _run(
                cfg,
                handlers,
                as_json=args.json,
                json_logs=args.log_format == "json",
                server_options=server_options,
            )
        )
    finally:
        loop.close()


def _supervise(args: argparse.Namespace, cfg: EdgeConfig, urls: list[str]) -> int:
    try:
        from edge.cluster.supervisor import SupervisorOptions, run_supervisor
    except ImportError as exc:
        raise CliError(
            f"--workers and --cluster need the edgesim[cluster] extra (nats-py): {exc}"
        ) from None
    options = SupervisorOptions(
        workers=args.workers or 1,
        cluster=urls,
        node_id=args.node_id or "",
        worker_args=_worker_args(args),
        as_json=args.json,
    )
    loop = new_event_loop(cfg.use_uvloop)
    try:
        return loop.run_until_complete(run_supervisor(cfg, options))
    finally:
        loop.close()


async def _run(
    cfg: EdgeConfig,
    handlers: HandlerRegistry,
    *,
    as_json: bool,
    json_logs: bool = False,
    server_options: dict[str, Any] | None = None,
) -> int:
    options = server_options or {}
    if json_logs:
        # Each event is logged whole by a listener, not as the log's text line.
        events = EventLog(log_events=False)
        log_events_as_json(events)
        server = EdgeServer(cfg, handlers=handlers, events=events, **options)
    else:
        server = EdgeServer(cfg, handlers=handlers, **options)
    try:
        await server.start()
    except EdgeServerError as exc:
        raise CliError(str(exc)) from None
    # Everything built so far (modules, contexts, the trust snapshot) lives as long
    # as the process: out of the collector's sight, a collection walks only what
    # connections create. This process is the edge's alone, so freezing its heap is ours to do.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        where = {
            kind: f"{getattr(cfg.listeners, kind).host}:{port}"
            for kind, port in server.ports.items()
        }
        say("edgesim edge: listening " + " ".join(f"{k}={v}" for k, v in where.items()))
        say(f"edgesim edge: trust store {cfg.store_path}")
        # Which connect path runs, and why not the compiled one: it changes the CPU per connect.
        say(f"edgesim edge: connect path {compiled_status()}")
        if server.admin_token is not None:
            say(f"edgesim edge: admin token in {cfg.store_path}.token")
        admin_port = server.ports.get("admin")
        if admin_port is not None and cfg.listeners.admin is not None:
            scheme = "https" if cfg.admin.cert is not None else "http"
            login = " (or an admin client certificate)" if cfg.admin.client_ca else ""
            say(
                f"edgesim edge: web console {scheme}://{cfg.listeners.admin.host}:{admin_port}/ui"
                f", log in with the token{login}"
            )
        if as_json:
            emit({"ports": server.ports, "listen": where}, as_json=True)
        await stop.wait()
        say("edgesim edge: stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
    return EXIT_OK
