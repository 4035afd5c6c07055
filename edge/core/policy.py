"""Who may publish and subscribe where, and which client ids a device may use.

A policy is a list of rules per certificate set. Each rule grants MQTT topic
filters for publishing and for subscribing, written with substitutions:

=================  =====================================================
``{identity}``     the device's name (its certificate's identity)
``{set}``          the certificate set (namespace) that verified it
``{client_id}``    the protocol's client id (MQTT); the name elsewhere
``%u``, ``%c``     Mosquitto-style aliases of ``{identity}``, ``{client_id}``
=================  =====================================================

A value holding ``/``, ``+``, ``#`` or NUL is never substituted (the rule then
grants nothing): a device named ``#`` must not receive every topic.

Modes: ``default`` (a device publishes and subscribes under
``devices/{identity}/#`` and subscribes to ``broadcast/#``), ``open`` (everything
is allowed), ``rules`` (only the given rules). Publishing needs a filter matching
the topic; subscribing needs a granted filter that *contains* the requested one
(``devices/a/#`` allows ``devices/a/+/x``, never ``devices/+/x``).

The client-id rule: ``must-equal`` the identity, ``must-start-with`` it, or ``free``.

Configuration comes from the server's TOML ``[policy]`` table through
:meth:`PolicyConfig.from_dict`, which raises
:class:`~edge.core.errors.PolicyConfigError` naming the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge.core.errors import PolicyConfigError
from edge.core.session import DeviceIdentity
from edge.core.topics import filter_contains, matches, valid_filter

MODES: Final = ("default", "open", "rules")
CLIENT_ID_RULES: Final = ("must-equal", "must-start-with", "free")
_FORBIDDEN_IN_VALUES: Final = ("/", "+", "#", "\x00")


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyRule:
    """Filters granted to the devices of one certificate set (``"*"``: every set)."""

    set: str = "*"
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


DEFAULT_RULES: Final = (
    PolicyRule(
        set="*",
        publish=("devices/{identity}/#",),
        subscribe=("devices/{identity}/#", "broadcast/#"),
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyConfig:
    """The ``[policy]`` configuration."""

    mode: str = "default"
    client_id: str = "must-equal"
    rules: tuple[PolicyRule, ...] = field(default=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "policy") -> PolicyConfig:
        """Build a config from a TOML-style table; errors name ``where`` and the key."""
        known = {"mode", "client_id", "rules"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyConfigError(
                f"{where}: unknown key {unknown[0]!r} (known: client_id, mode, rules)"
            )
        mode = data.get("mode", "default")
        if mode not in MODES:
            raise PolicyConfigError(f"{where}.mode: {mode!r} is not one of {', '.join(MODES)}")
        client_id = data.get("client_id", "must-equal")
        if client_id not in CLIENT_ID_RULES:
            raise PolicyConfigError(
                f"{where}.client_id: {client_id!r} is not one of {', '.join(CLIENT_ID_RULES)}"
            )
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise PolicyConfigError(f"{where}.rules: expected a list of tables")
        rules = tuple(_rule(r, f"{where}.rules[{i}]") for i, r in enumerate(raw_rules))
        if mode == "rules" and not rules:
            raise PolicyConfigError(f"{where}.rules: mode 'rules' needs at least one rule")
        if mode != "rules" and rules:
            raise PolicyConfigError(f"{where}.rules: rules are only used with mode 'rules'")
        return cls(mode=mode, client_id=client_id, rules=rules)


def _rule(raw: object, where: str) -> PolicyRule:
    if not isinstance(raw, Mapping):
        raise PolicyConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"set", "publish", "subscribe"})
    if unknown:
        raise PolicyConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: publish, set, subscribe)"
        )
    set_name = raw.get("set", "*")
    if not isinstance(set_name, str) or not set_name:
        raise PolicyConfigError(f"{where}.set: expected a set name or '*'")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("publish", "subscribe"):
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PolicyConfigError(f"{where}.{key}: expected a list of topic filters")
        for j, value in enumerate(values):
            if not valid_filter(_substitute(value, "x", "x", "x") or ""):
                raise PolicyConfigError(
                    f"{where}.{key}[{j}]: {value!r} is not a valid topic filter"
                )
        lists[key] = tuple(values)
    return PolicyRule(set=set_name, publish=lists["publish"], subscribe=lists["subscribe"])


def _substitute(template: str, identity: str, client_id: str, set_name: str) -> str | None:
    """Expand a filter template, or None if a value would change the filter's shape."""
    out = template
    for token, value in (
        ("{identity}", identity),
        ("%u", identity),
        ("{client_id}", client_id),
        ("%c", client_id),
        ("{set}", set_name),
    ):
        if token in out:
            if not value or any(ch in value for ch in _FORBIDDEN_IN_VALUES):
                return None
            out = out.replace(token, value)
    return out


class Grant:
    """The expanded filters of one (identity, client id), with a per-topic verdict cache."""

    __slots__ = ("_publish_cache", "publish", "subscribe")

    def __init__(self, publish: list[str], subscribe: list[str]) -> None:
        self.publish = publish
        self.subscribe = subscribe
        self._publish_cache: dict[str, bool] = {}

    def may_publish(self, topic: str) -> bool:
        """True if a granted publish filter matches ``topic``."""
        verdict = self._publish_cache.get(topic)
        if verdict is None:
            verdict = any(matches(f, topic) for f in self.publish)
            if len(self._publish_cache) > 4096:
                self._publish_cache.clear()
            self._publish_cache[topic] = verdict
        return verdict

    def may_subscribe(self, topic_filter: str) -> bool:
        """True if a granted subscribe filter contains ``topic_filter``."""
        return any(filter_contains(f, topic_filter) for f in self.subscribe)


class Policy:
    """Decisions for one configuration. Reasons are short strings for events."""

    __slots__ = ("_grants", "config", "open_access")

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.open_access = self.config.mode == "open"
        self._grants: dict[tuple[DeviceIdentity, str], Grant] = {}

    @classmethod
    def open(cls) -> Policy:
        """Allow any authenticated device everything, with any client id."""
        return cls(PolicyConfig(mode="open", client_id="free"))

    @classmethod
    def default(cls) -> Policy:
        """The default policy: own subtree plus ``broadcast/#``, client id = identity."""
        return cls(PolicyConfig())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build from a ``[policy]`` table (see :meth:`PolicyConfig.from_dict`)."""
        return cls(PolicyConfig.from_dict(data))

    def check_client_id(self, identity: DeviceIdentity, client_id: str) -> str | None:
        """None if ``client_id`` is acceptable for ``identity``, else the reason."""
        rule = self.config.client_id
        if rule == "free":
            return None
        if rule == "must-equal" and client_id != identity.name:
            return f"client id {client_id!r} must equal the identity {identity.name!r}"
        if rule == "must-start-with" and not client_id.startswith(identity.name):
            return f"client id {client_id!r} must start with the identity {identity.name!r}"
        return None

    def grant(self, identity: DeviceIdentity, client_id: str) -> Grant:
        """The expanded filters for ``identity`` using ``client_id`` (cached)."""
        key = (identity, client_id)
        grant = self._grants.get(key)
        if grant is None:
            if self.open_access:
                grant = Grant(["#"], ["#"])
            else:
                rules = self.config.rules if self.config.mode == "rules" else DEFAULT_RULES
                publish: list[str] = []
                subscribe: list[str] = []
                for rule in rules:
                    if rule.set != "*" and rule.set != identity.namespace:
                        continue
                    for template, out in ((rule.publish, publish), (rule.subscribe, subscribe)):
                        for t in template:
                            expanded = _substitute(
                                t, identity.name, client_id or identity.name, identity.namespace
                            )
                            if expanded is not None:
                                out.append(expanded)
                grant = Grant(publish, subscribe)
            if len(self._grants) > 100_000:
                self._grants.clear()
            self._grants[key] = grant
        return grant

    def may_publish(self, identity: DeviceIdentity, client_id: str, topic: str) -> str | None:
        """None if allowed, else the reason."""
        if self.open_access:
            return None
        if self.grant(identity, client_id).may_publish(topic):
            return None
        return f"no publish rule for {identity} matches {topic!r}"

    def may_subscribe(
        self, identity: DeviceIdentity, client_id: str, topic_filter: str
    ) -> str | None:
        """None if allowed, else the reason."""
        if self.open_access:
            return None
        if self.grant(identity, client_id).may_subscribe(topic_filter):
            return None
        return f"no subscribe rule for {identity} covers {topic_filter!r}"
