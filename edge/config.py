"""The edge's configuration: frozen, keyword-only dataclasses per concern, one TOML loader.

An ``edge.toml`` (every key optional; relative paths are relative to the file)::

    state_dir = ".edgesim"          # embedded PKI and store when nothing else is given

    [listeners]                     # "HOST:PORT"; port 0 picks a free port; "" disables
    mqtt  = "127.0.0.1:8883"
    https = "127.0.0.1:8443"        # device HTTPS + WebSocket (/mqtt, /ws)
    multi = ""                      # MQTT + HTTP on one port (ALPN / first bytes)
    admin = "127.0.0.1:8081"

    [tls]
    cert = "pki/server.pem"         # chain after the leaf; default: the embedded PKI
    key = "pki/server.key"
    profile = "intermediate"        # Mozilla's modern | intermediate | old (edge.tls.profiles)
    minimum_version = ""            # "": the profile's (1.3 | 1.2 | 1.0); may raise it
    num_tickets = 0
    alpn = ["mqtt", "x-amzn-mqtt-ca", "http/1.1"]
    keylog_file = ""                # SSLKEYLOGFILE-style, for Wireshark
    capture_tls13_certificates = true  # name the certificate of refused TLS 1.3 devices
    handshake_timeout = 10.0
    max_handshakes = 2000
    max_connections = 50000
    max_lingering = 256             # refused connections kept open for their alert
    max_unauthenticated_per_source = -1  # -1: 5 % of max_connections (at least 8)
    handshake_rate_per_source = 2000.0   # per second per source address; 0: off

    [http]                          # the device HTTPS port (and its WebSocket upgrades)
    request_head_timeout = 30.0     # whole first request head, from TLS accept (slowloris)
    keepalive_timeout = 75.0        # idle time allowed between requests

    [identity]
    rule = "cn"                     # cn | san-dns | san-uri | san-email | sha256 | subject

    [trust]
    store = ".edgesim/trust.db"
    propagation_delay = 0.0
    watch_interval = 1.0
    cert_expiry_days = 30           # server certificates expiring this soon are reported

    [pki]
    dir = ""                        # a folder made by `edgesim pki quickstart`

    [mqtt]                          # edge.mqtt.broker.MqttConfig's fields
    max_packet_size = 268435460
    connect_timeout = 10.0
    queue_qos0_messages = false     # queue QoS 0 for offline persistent sessions

    [persistence]                   # durable MQTT sessions, messages, retained
    enabled = true
    path = ""                       # default: next to the trust store, <store>.mqtt
    synchronous = "full"            # full: fsync each batch; normal: survive kill -9 only
    batch_delay = 0.0               # seconds to gather a batch (0: one loop iteration)

    [policy]                        # preset "open" or "default", or the policy table itself
    preset = "default"

    [metrics]                       # GET /metrics on the admin listener
    auth = true                     # false: no token needed (scrapers on loopback)

    [admin]                         # the admin listener (API, web console, /metrics)
    cert = ""                       # HTTPS instead of HTTP: its certificate chain (PEM)
    key = ""
    client_ca = ""                  # admin CA(s), PEM: their client certificates log in
    client_cert = "optional"        # optional: token or certificate; required: certificate

Errors::

    EdgeConfigError      a key has a bad value or the file cannot be read;
                         the message names the file, the key and what is wrong
"""

from __future__ import annotations

import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.identity import IdentityRule, parse_rule
from edge.mqtt.broker import MqttConfig
from edge.mqtt.errors import MqttConfigError
from edge.tls.contexts import DEFAULT_ALPN, parse_tls_version
from edge.tls.profiles import DEFAULT_PROFILE, get_profile

__all__ = [
    "AdminConfig",
    "EdgeConfig",
    "EdgeConfigError",
    "HostPort",
    "HttpConfig",
    "IdentityConfig",
    "ListenersConfig",
    "PersistenceConfig",
    "TlsConfig",
    "TrustConfig",
    "load_config",
    "parse_host_port",
]


class EdgeConfigError(Exception):
    """The configuration is invalid; the message names where and what."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    """An address to listen on (port 0: any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host_port(text: str, *, where: str) -> HostPort | None:
    """Parse ``HOST:PORT`` (or ``PORT``, or ``[v6]:PORT``); ``""`` / ``off`` gives ``None``."""
    value = text.strip()
    if value in ("", "off", "none"):
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise EdgeConfigError(
            f"{where}: {text!r} is not HOST:PORT (port must be a number)"
        ) from None
    if not 0 <= port <= 65535:
        raise EdgeConfigError(f"{where}: port {port} is out of range 0-65535")
    return HostPort(host=host, port=port)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenersConfig:
    """Which listeners run, and where (``None``: off)."""

    mqtt: HostPort | None = HostPort(host="127.0.0.1", port=8883)
    https: HostPort | None = HostPort(host="127.0.0.1", port=8443)
    multi: HostPort | None = None
    admin: HostPort | None = HostPort(host="127.0.0.1", port=8081)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """The server certificate and the TLS rules for devices."""

    #: Server certificate chain and key; ``None`` means the embedded / --pki PKI.
    cert: Path | None = None
    key: Path | None = None
    #: Mozilla's configuration the device listeners follow (:mod:`edge.tls.profiles`).
    profile: str = DEFAULT_PROFILE
    #: None: the profile's minimum version; a version here may raise it, never lower it.
    minimum_version: ssl.TLSVersion | None = None
    num_tickets: int = 0
    alpn: tuple[str, ...] = DEFAULT_ALPN
    keylog_file: Path | None = None
    #: Name the certificate of a device refused over TLS 1.3 (where it is encrypted).
    #: Read from the chain OpenSSL built to verify it (edge.tls.verifiedchain), which
    #: costs nothing until a handshake fails. On a Python where that chain cannot be
    #: read, this turns on the key log tap instead (edge.tls.keylog), which costs CPU
    #: on every TLS 1.3 connect; false turns the tap off. TLS 1.2 refusals always name
    #: the certificate (it is cleartext).
    capture_tls13_certificates: bool = True
    handshake_timeout: float = 10.0
    max_handshakes: int = 2000
    max_connections: int = 50_000
    #: Refused connections that may linger (for their alert to arrive) at once,
    #: outside max_connections; beyond it a refused connection is dropped at once.
    max_lingering: int = 256
    #: Connections one source address may hold before its handshake finishes;
    #: ``None``: 5 % of max_connections (at least 8), so one address cannot fill it.
    max_unauthenticated_per_source: int | None = None
    #: Handshakes per second one source address may start; 0: no limit.
    handshake_rate_per_source: float = 2000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """Timeouts of the device HTTPS listener (its WebSocket upgrades included)."""

    #: Seconds from the TLS accept to a complete first request head.
    request_head_timeout: float = 30.0
    #: Seconds a keep-alive connection may stay idle between requests.
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin listener's TLS and certificate login (its address is in ``[listeners]``).

    With ``client_ca`` a client certificate issued by one of those CAs logs in
    as the admin, without the token (the web console in a browser holding the
    certificate). Use CAs that issue admin certificates only, never a device CA:
    every certificate they issue is an administrator. ``client_cert``:
    ``"optional"`` asks for a certificate and accepts the token from clients
    without one; ``"required"`` refuses a TLS handshake without one.
    """

    #: The listener's certificate chain and key; ``None``: plain HTTP.
    cert: Path | None = None
    key: Path | None = None
    #: PEM file of the admin CAs; ``None``: no certificate login.
    client_ca: Path | None = None
    client_cert: str = "optional"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConfig:
    """How a device is named from its certificate."""

    rule: IdentityRule = IdentityRule.CN


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustConfig:
    """Where certificate sets live and how changes propagate."""

    #: ``None``: ``<state_dir>/trust.db``.
    store: Path | None = None
    propagation_delay: float = 0.0
    #: Seconds between checks for changes other processes made to the store.
    watch_interval: float | None = 1.0
    #: Server certificates expiring within this many days are reported (list,
    #: status, and a ``cert.expiring`` event at start-up and daily).
    cert_expiry_days: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistenceConfig:
    """Durable MQTT state (:mod:`edge.mqtt.sqlite_store`): what survives a restart or crash."""

    enabled: bool = True
    #: The SQLite file; ``None``: ``<trust store>.mqtt`` (one per edge, like the token).
    path: Path | None = None
    #: ``"full"``: each batch is fsynced before its acks; ``"normal"``: written to
    #: the OS before its acks (survives ``kill -9``, not a power cut).
    synchronous: str = "full"
    #: Seconds the first change of a batch waits for more (0: one loop iteration).
    batch_delay: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    """Everything ``EdgeServer`` needs."""

    state_dir: Path = Path(".edgesim")
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    #: A folder made by ``edgesim pki quickstart`` (server cert/key, ``ca-chain.pem``).
    pki_dir: Path | None = None
    #: ``"open"``, ``"default"``, or a policy table for ``Policy.from_dict``.
    policy: str | Mapping[str, Any] = "default"
    #: Written atomically with the bound ports once listening.
    ready_file: Path | None = None
    #: The MQTT broker's limits and timers (the ``[mqtt]`` table).
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    use_uvloop: bool = True
    #: Whether the admin listener's ``/metrics`` needs the admin token.
    metrics_auth: bool = True
    #: The admin listener's TLS and certificate login (the ``[admin]`` table).
    admin: AdminConfig = field(default_factory=AdminConfig)
    #: Durable MQTT state (the ``[persistence]`` table).
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)

    def with_overrides(self, **changes: Any) -> EdgeConfig:
        """Return a copy with top-level fields replaced."""
        return replace(self, **changes)

    @property
    def store_path(self) -> Path:
        """The trust store file."""
        return self.trust.store or self.state_dir / "trust.db"

    @property
    def mqtt_state_path(self) -> Path:
        """The MQTT state file (``[persistence].path``, else ``<trust store>.mqtt``)."""
        store = self.store_path
        return self.persistence.path or store.with_name(store.name + ".mqtt")


_KNOWN = {
    "": {
        "state_dir",
        "listeners",
        "tls",
        "http",
        "identity",
        "trust",
        "pki",
        "policy",
        "ready_file",
        "mqtt",
        "metrics",
        "admin",
        "persistence",
    },
    "metrics": {"auth"},
    "admin": {"cert", "key", "client_ca", "client_cert"},
    "persistence": {"enabled", "path", "synchronous", "batch_delay"},
    "listeners": {"mqtt", "https", "multi", "admin"},
    "tls": {
        "cert",
        "key",
        "profile",
        "minimum_version",
        "num_tickets",
        "alpn",
        "keylog_file",
        "capture_tls13_certificates",
        "handshake_timeout",
        "max_handshakes",
        "max_connections",
        "max_lingering",
        "max_unauthenticated_per_source",
        "handshake_rate_per_source",
    },
    "http": {"request_head_timeout", "keepalive_timeout"},
    "identity": {"rule"},
    "trust": {"store", "propagation_delay", "watch_interval", "cert_expiry_days"},
    "pki": {"dir"},
}


def _check_keys(table: Mapping[str, Any], section: str, source: str) -> None:
    unknown = set(table) - _KNOWN[section]
    if unknown:
        where = f"[{section}]" if section else "top level"
        known = ", ".join(sorted(_KNOWN[section]))
        raise EdgeConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))} in {where} (known: {known})"
        )


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise EdgeConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise EdgeConfigError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _path(base: Path, text: str) -> Path | None:
    if not text:
        return None
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _admin_config(table: Mapping[str, Any], base: Path, where: str) -> AdminConfig:
    paths = {
        key: _path(base, _get(table, key, str, where))
        for key in ("cert", "key", "client_ca")
        if key in table
    }
    mode = _get(table, "client_cert", str, where) if "client_cert" in table else "optional"
    if mode not in ("optional", "required"):
        raise EdgeConfigError(
            f'{where}.client_cert: expected "optional" or "required", got {mode!r}'
        )
    cert, key = paths.get("cert"), paths.get("key")
    if (cert is None) != (key is None):
        raise EdgeConfigError(f"{where}: cert and key go together (HTTPS on the admin listener)")
    if paths.get("client_ca") is not None and cert is None:
        raise EdgeConfigError(
            f"{where}.client_ca: client certificates need HTTPS: set cert and key as well"
        )
    return AdminConfig(cert=cert, key=key, client_ca=paths.get("client_ca"), client_cert=mode)


def config_from_dict(data: Mapping[str, Any], *, base: Path, source: str) -> EdgeConfig:
    """Build an :class:`EdgeConfig` from parsed TOML; relative paths resolve against ``base``."""
    _check_keys(data, "", source)
    cfg = EdgeConfig()
    changes: dict[str, Any] = {}
    if "state_dir" in data:
        changes["state_dir"] = _path(base, _get(data, "state_dir", str, source)) or cfg.state_dir
    if "ready_file" in data:
        changes["ready_file"] = _path(base, _get(data, "ready_file", str, source))
    lst = data.get("listeners", {})
    if lst:
        _check_keys(lst, "listeners", source)
        listeners = {
            name: parse_host_port(
                _get(lst, name, str, f"{source} [listeners]"), where=f"{source} [listeners].{name}"
            )
            for name in lst
        }
        changes["listeners"] = replace(cfg.listeners, **listeners)
    tls = data.get("tls", {})
    if tls:
        _check_keys(tls, "tls", source)
        where = f"{source} [tls]"
        t: dict[str, Any] = {}
        for key in ("cert", "key", "keylog_file"):
            if key in tls:
                t[key] = _path(base, _get(tls, key, str, where))
        if "profile" in tls:
            try:
                t["profile"] = get_profile(_get(tls, "profile", str, where)).name
            except ValueError as exc:
                raise EdgeConfigError(f"{where}.profile: {exc}") from None
        profile = get_profile(t.get("profile", cfg.tls.profile))
        if "minimum_version" in tls and str(tls["minimum_version"]).strip():
            try:
                t["minimum_version"] = parse_tls_version(str(tls["minimum_version"]))
            except ValueError as exc:
                raise EdgeConfigError(f"{where}.minimum_version: {exc}") from None
            if t["minimum_version"] < profile.minimum_version:
                raise EdgeConfigError(
                    f"{where}.minimum_version: {tls['minimum_version']!r} is below profile"
                    f" {profile.name}'s minimum ({profile.minimum_version.name}); choose"
                    ' profile = "old" for older clients'
                )
        if "max_unauthenticated_per_source" in tls:
            value = _get(tls, "max_unauthenticated_per_source", int, where)
            if value < -1 or value == 0:
                raise EdgeConfigError(
                    f"{where}.max_unauthenticated_per_source: must be >= 1 (or -1: automatic),"
                    f" got {value}"
                )
            t["max_unauthenticated_per_source"] = None if value == -1 else value
        if "handshake_rate_per_source" in tls:
            value = float(_get(tls, "handshake_rate_per_source", (int, float), where))
            if value < 0:
                raise EdgeConfigError(
                    f"{where}.handshake_rate_per_source: must be >= 0, got {value}"
                )
            t["handshake_rate_per_source"] = value
        for key in ("num_tickets", "max_handshakes", "max_connections", "max_lingering"):
            if key in tls:
                value = _get(tls, key, int, where)
                if value < 0:
                    raise EdgeConfigError(f"{where}.{key}: must be >= 0, got {value}")
                t[key] = value
        if "handshake_timeout" in tls:
            value = float(_get(tls, "handshake_timeout", (int, float), where))
            if value <= 0:
                raise EdgeConfigError(f"{where}.handshake_timeout: must be > 0, got {value}")
            t["handshake_timeout"] = value
        if "capture_tls13_certificates" in tls:
            t["capture_tls13_certificates"] = _get(tls, "capture_tls13_certificates", bool, where)
        if "alpn" in tls:
            alpn = _get(tls, "alpn", list, where)
            if not all(isinstance(a, str) and a for a in alpn):
                raise EdgeConfigError(f"{where}.alpn: expected a list of non-empty strings")
            t["alpn"] = tuple(alpn)
        changes["tls"] = replace(cfg.tls, **t)
    http = data.get("http", {})
    if http:
        _check_keys(http, "http", source)
        where = f"{source} [http]"
        h: dict[str, float] = {}
        for key in ("request_head_timeout", "keepalive_timeout"):
            if key in http:
                value = float(_get(http, key, (int, float), where))
                if value <= 0:
                    raise EdgeConfigError(f"{where}.{key}: must be > 0, got {value}")
                h[key] = value
        changes["http"] = replace(cfg.http, **h)
    ident = data.get("identity", {})
    if ident:
        _check_keys(ident, "identity", source)
        try:
            rule = parse_rule(_get(ident, "rule", str, f"{source} [identity]"))
        except ValueError as exc:
            raise EdgeConfigError(f"{source} [identity].rule: {exc}") from None
        changes["identity"] = IdentityConfig(rule=rule)
    trust = data.get("trust", {})
    if trust:
        _check_keys(trust, "trust", source)
        where = f"{source} [trust]"
        tr: dict[str, Any] = {}
        if "store" in trust:
            tr["store"] = _path(base, _get(trust, "store", str, where))
        for key in ("propagation_delay", "watch_interval", "cert_expiry_days"):
            if key in trust:
                value = float(_get(trust, key, (int, float), where))
                if value < 0:
                    raise EdgeConfigError(f"{where}.{key}: must be >= 0, got {value}")
                tr[key] = value
        changes["trust"] = replace(cfg.trust, **tr)
    pki = data.get("pki", {})
    if pki:
        _check_keys(pki, "pki", source)
        changes["pki_dir"] = _path(base, _get(pki, "dir", str, f"{source} [pki]"))
    mqtt = data.get("mqtt")
    if mqtt is not None:
        if not isinstance(mqtt, Mapping):
            raise EdgeConfigError(f"{source} [mqtt]: expected a table")
        try:
            changes["mqtt"] = MqttConfig.from_dict(mqtt, where=f"{source} [mqtt]")
        except MqttConfigError as exc:
            raise EdgeConfigError(str(exc)) from None
    persistence = data.get("persistence", {})
    if persistence:
        _check_keys(persistence, "persistence", source)
        where = f"{source} [persistence]"
        pc: dict[str, Any] = {}
        if "enabled" in persistence:
            pc["enabled"] = _get(persistence, "enabled", bool, where)
        if "path" in persistence:
            pc["path"] = _path(base, _get(persistence, "path", str, where))
        if "synchronous" in persistence:
            sync = _get(persistence, "synchronous", str, where)
            if sync not in ("full", "normal"):
                raise EdgeConfigError(
                    f'{where}.synchronous: expected "full" or "normal", got {sync!r}'
                )
            pc["synchronous"] = sync
        if "batch_delay" in persistence:
            delay = float(_get(persistence, "batch_delay", (int, float), where))
            if not 0 <= delay <= 1:
                raise EdgeConfigError(f"{where}.batch_delay: must be 0 to 1 seconds, got {delay}")
            pc["batch_delay"] = delay
        changes["persistence"] = PersistenceConfig(**pc)
    metrics = data.get("metrics", {})
    if metrics:
        _check_keys(metrics, "metrics", source)
        if "auth" in metrics:
            changes["metrics_auth"] = _get(metrics, "auth", bool, f"{source} [metrics]")
    admin = data.get("admin", {})
    if admin:
        _check_keys(admin, "admin", source)
        changes["admin"] = _admin_config(admin, base, f"{source} [admin]")
    policy = data.get("policy")
    if policy is not None:
        if not isinstance(policy, Mapping):
            raise EdgeConfigError(f"{source} [policy]: expected a table")
        preset = policy.get("preset")
        if preset is not None:
            if preset not in ("open", "default") or len(policy) > 1:
                raise EdgeConfigError(
                    f'{source} [policy].preset: expected "open" or "default" alone, got {preset!r}'
                )
            changes["policy"] = preset
        else:
            changes["policy"] = dict(policy)
    return replace(cfg, **changes)


def load_config(path: Path) -> EdgeConfig:
    """Read an ``edge.toml``; raises :class:`EdgeConfigError` naming the file and the key."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise EdgeConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgeConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, base=path.parent, source=str(path))
