"""Policy configuration, substitutions, client-id rules and containment checks."""

from __future__ import annotations

import pytest

from edge.core.errors import PolicyConfigError
from edge.core.policy import Policy, PolicyConfig, PolicyRule
from edge.core.session import DeviceIdentity

DEV = DeviceIdentity(namespace="fleet", name="dev-1")


def test_default_policy() -> None:
    policy = Policy.default()
    assert policy.may_publish(DEV, "dev-1", "devices/dev-1/telemetry") is None
    assert policy.may_publish(DEV, "dev-1", "devices/dev-2/telemetry") is not None
    assert policy.may_publish(DEV, "dev-1", "broadcast/all") is not None
    assert policy.may_subscribe(DEV, "dev-1", "broadcast/#") is None
    assert policy.may_subscribe(DEV, "dev-1", "devices/dev-1/+/cmd") is None
    reason = policy.may_subscribe(DEV, "dev-1", "devices/+/cmd")
    assert reason == "no subscribe rule for fleet/dev-1 covers 'devices/+/cmd'"
    assert policy.may_subscribe(DEV, "dev-1", "#") is not None


def test_client_id_rules() -> None:
    assert Policy.default().check_client_id(DEV, "dev-1") is None
    assert "must equal" in (Policy.default().check_client_id(DEV, "other") or "")
    start = Policy(PolicyConfig(client_id="must-start-with"))
    assert start.check_client_id(DEV, "dev-1-sensor") is None
    assert start.check_client_id(DEV, "x-dev-1") is not None
    assert Policy.open().check_client_id(DEV, "anything") is None


def test_open_policy_allows_everything() -> None:
    policy = Policy.open()
    assert policy.may_publish(DEV, "c", "$SYS/x") is None
    assert policy.may_subscribe(DEV, "c", "#") is None


def test_rules_with_substitutions_and_sets() -> None:
    policy = Policy.from_dict(
        {
            "mode": "rules",
            "client_id": "free",
            "rules": [
                {"set": "*", "publish": ["up/{set}/{identity}/#"], "subscribe": ["down/%c/#"]},
                {"set": "other", "publish": ["other/#"]},
            ],
        }
    )
    assert policy.may_publish(DEV, "c1", "up/fleet/dev-1/x") is None
    assert policy.may_publish(DEV, "c1", "other/x") is not None
    assert policy.may_subscribe(DEV, "c1", "down/c1/+") is None
    assert policy.may_subscribe(DEV, "c2", "down/c1/+") is not None
    assert policy.may_publish(DeviceIdentity(namespace="other", name="d"), "d", "other/x") is None


def test_values_with_wildcards_or_slashes_grant_nothing() -> None:
    policy = Policy.default()
    sneaky = DeviceIdentity(namespace="fleet", name="#")
    assert policy.may_subscribe(sneaky, "#", "devices/#") is not None
    assert policy.may_publish(sneaky, "#", "devices/x/y") is not None
    slashed = DeviceIdentity(namespace="fleet", name="a/b")
    assert policy.may_publish(slashed, "a/b", "devices/a/b/x") is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "closed"}, "policy.mode: 'closed' is not one of default, open, rules"),
        ({"client_id": "any"}, "policy.client_id: 'any' is not one of"),
        ({"colour": 1}, "policy: unknown key 'colour'"),
        ({"mode": "rules"}, "needs at least one rule"),
        ({"mode": "open", "rules": [{"publish": ["#"]}]}, "only used with mode 'rules'"),
        ({"mode": "rules", "rules": [{"publish": ["a/#/b"]}]}, r"policy.rules\[0\].publish\[0\]"),
        ({"mode": "rules", "rules": [{"publish": "a"}]}, r"rules\[0\].publish: expected a list"),
        ({"mode": "rules", "rules": ["x"]}, r"rules\[0\]: expected a table"),
        ({"mode": "rules", "rules": [{"deny": []}]}, "unknown key 'deny'"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        PolicyConfig.from_dict(data)


def test_config_round_trip() -> None:
    config = PolicyConfig.from_dict({"mode": "rules", "rules": [{"set": "s", "publish": ["a/#"]}]})
    assert config.rules == (PolicyRule(set="s", publish=("a/#",), subscribe=()),)
    assert config.client_id == "must-equal"
