"""Cloud profiles: the limits and choices of a production broker, in one table.

``edgesim edge serve --profile NAME`` (and the ``[mqtt] profile`` key) starts from
:class:`~edge.mqtt.broker.MqttConfig`'s defaults, which follow the OASIS MQTT 5.0
text, and applies one row of :data:`PROFILES`. A device that breaks a limit then
meets the reason code and the disconnect the real service answers with, plus a
Reason String and an ``mqtt.limit`` event naming the limit.

Every value is cited in :data:`SOURCES`; ``[unverified]`` marks a value that was
looked for in the provider's documentation (the stored copies the project's search
tool holds, 2026-12-07) and not found there: it is what the provider is believed to
do, and should be checked before relying on it.

=========================  ===============  ===============  ===============
MqttConfig key             aws-iot-core     mosquitto        emqx
=========================  ===============  ===============  ===============
maximum_qos                1 [a]            2                2
max_client_id_length       128 [b]          --               --
max_topic_length           256 [b]          --               --
max_topic_levels           8 (7 slashes)    --               --
                           [b, c]
max_filters_per_subscribe  8 [b, c]         --               --
max_payload                131072 [c, d]    --               --
max_publish_rate           100 /s [b]       --               --
max_throughput             524288 B/s [b]   --               --
receive_maximum            100 [c, k]       20 [e]           32 [l; 32 is
                                                             unverified]
topic_alias_maximum        8 [unverified]   10 [e, g]        65535 [f]
subscription identifiers   no [h]           yes              yes
shared subscriptions       yes [m]          yes              yes
max_keepalive              1200 [c]         65535            65535
max_packet_size            --               2000000 [e]      1048576 [f]
reason strings             yes [unverified] no [i]           yes
reason codes               spec             mosquitto [j]    spec
CONNACK properties         all              mosquitto [e]    all
=========================  ===============  ===============  ===============

What a device meets for each limit (the codes are MQTT 5's for the situation; a
3.1.1 device is disconnected): client id too long -> CONNACK 0x85; topic too
long or too deep -> PUBACK 0x90 (QoS 0: DISCONNECT 0x90); too many filters in a
SUBSCRIBE -> SUBACK 0x97 for the filters beyond the limit; payload too large ->
DISCONNECT 0x95; publish rate -> DISCONNECT 0x96; throughput -> DISCONNECT 0x97;
QoS above the maximum -> DISCONNECT 0x9B; a subscription identifier where there
are none -> DISCONNECT 0xA1.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from edge.mqtt.errors import MqttConfigError

__all__ = [
    "MOSQUITTO_CODES",
    "PROFILES",
    "SOURCES",
    "UNVERIFIED",
    "apply_profile",
    "mosquitto_code",
]

#: The rows of the table above, as MqttConfig keyword overrides.
PROFILES: Final[dict[str, dict[str, Any]]] = {
    "aws-iot-core": {
        "maximum_qos": 1,
        "max_client_id_length": 128,
        "max_topic_length": 256,
        "max_topic_levels": 8,
        "max_filters_per_subscribe": 8,
        "max_payload": 128 * 1024,
        "max_publish_rate": 100.0,
        "max_throughput": 512.0 * 1024,
        "receive_maximum": 100,
        "topic_alias_maximum": 8,
        "subscription_identifier_available": False,
        "max_keepalive": 1200,
    },
    "mosquitto": {
        "receive_maximum": 20,
        "topic_alias_maximum": 10,
        "max_packet_size": 2_000_000,
        "reason_strings": False,
        "reason_codes": "mosquitto",
        "connack_properties": "mosquitto",
    },
    "emqx": {
        "receive_maximum": 32,
        "topic_alias_maximum": 65535,
        "max_packet_size": 1 << 20,
    },
}

#: Where each row's values come from.
SOURCES: Final[dict[str, str]] = {
    "a": "https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html (QoS 0 and 1 only)",
    "b": "https://aws.github.io/aws-iot-device-sdk-js-v2/node/enums/"
    "mqtt5.ClientExtendedValidationAndFlowControl.html (AwsIotCoreDefaults: 8 subscriptions "
    "per SUBSCRIBE, 7 slashes, topics <= 256 bytes, client id <= 128 bytes, 512 KB/s, 100 TPS);"
    " the same values as the SDK's own constants in awslabs/aws-c-mqtt "
    "include/aws/mqtt/private/v5/mqtt5_utils.h (AWS_IOT_CORE_MAXIMUM_CLIENT_ID_LENGTH 128, "
    "_TOPIC_LENGTH 256, _TOPIC_SEGMENTS 8, _SUSBCRIPTIONS_PER_SUBSCRIBE 8, "
    "PUBLISH_PER_SECOND_LIMIT 100, THROUGHPUT_LIMIT 512 * 1024), checked 2026-12-07",
    "c": "AWS IoT message broker quotas (mirror of the quota page: 128 KB payload, 7 slashes, "
    "8 subscriptions per SUBSCRIBE, 100 unacknowledged messages in flight each way, "
    "keepalive up to 1200 s): https://blog.csdn.net/whatnamecaniuse/article/details/78065968",
    "d": "https://docs.aws.amazon.com/iot/latest/developerguide/device-advisor-tests-mqtt.html "
    "('AWS IoT Core rejects publish and connect requests larger than 128 KB')",
    "e": "the CONNACK Mosquitto sends in its own test data "
    "(../shared/conformance/mqtt-sequences: 22 H10 27 L2000000 21 H20)",
    "f": "https://docs.emqx.com/en/emqx/latest/configuration/mqtt.html "
    "(max_packet_size 1MB, max_topic_alias 65535)",
    "g": "eclipse/mosquitto man/mosquitto.conf.5.xml (max_topic_alias default 10)",
    "h": "https://www.repost.aws/questions/QUF0gW3T7JSWOeRfHK79YpHQ/mqtt5-subscription-identifiers",
    "i": "https://mosquitto.org/blog/2019/02/mqtt5-test-release "
    "('no reason strings are provided by the broker')",
    "j": "Mosquitto's own test data; see MOSQUITTO_CODES",
    "k": "https://docs.espressif.com/projects/esp-rainmaker-neo/en/latest/specs/limits.html "
    "(a table of AWS IoT Core limits: unacknowledged outbound publishes per client 100, "
    "8 filters per SUBSCRIBE, 128 KB payload, 7 slashes); the AWS quota page itself "
    "(https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits) "
    "is stored only in part, without that table",
    "l": "emqx/emqx changes/ce/fix-12492.en.md (CONNACK Receive-Maximum is the server's "
    "max_inflight); the default of 32 was not found in the stored EMQX pages",
    "m": "aws/aws-iot-device-sdk-python-v2 samples/mqtt5_shared_subscription.md (an AWS "
    "sample of $share/<ShareName>/<TopicFilter> against AWS IoT Core, linking "
    "https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html#mqtt5-shared-subscription)",
}

#: Values looked for in the provider's documentation and not found (see the table).
UNVERIFIED: Final[dict[str, str]] = {
    "aws-iot-core topic_alias_maximum": "8: no stored AWS page or AWS SDK source states "
    "IoT Core's Topic Alias Maximum; the AWS SDKs read it from the CONNACK",
    "aws-iot-core reason strings": "AWS's MQTT 5 reason-code page is not in the stored copies",
    "emqx receive_maximum": "32 (EMQX's max_inflight default) is not in the stored EMQX pages",
}

#: Where Mosquitto's reason code differs from the OASIS text, by the codec's error
#: reason: (pattern, the spec's code, Mosquitto's code, why). Applied only under
#: ``reason_codes = "mosquitto"``; the default follows the spec.
MOSQUITTO_CODES: Final[list[tuple[str, int, int, str]]] = [
    (
        r"^(?!(UN)?SUBSCRIBE:).*is not allowed here$",
        0x81,
        0x82,
        "a property the packet type may not carry: Malformed Packet in section 2.2.2.2"
        " (Mosquitto agrees for SUBSCRIBE and UNSUBSCRIBE)",
    ),
    (
        r"^(DISCONNECT|AUTH|PUBREL): fixed-header flags",
        0x81,
        0x82,
        "reserved fixed-header flags are malformed (section 2.1.3)",
    ),
    (
        r"^(?!(UN)?SUBSCRIBE:).*packet identifier 0$",
        0x81,
        0x82,
        "packet identifier 0: malformed (Mosquitto agrees for SUBSCRIBE and UNSUBSCRIBE)",
    ),
    (r"^reserved (packet )?type 0", 0x81, 0x82, "packet type 0 is reserved: malformed"),
    (
        r"^(UN)?SUBSCRIBE: no topic filter$",
        0x82,
        0x81,
        "a (UN)SUBSCRIBE without a filter: Protocol Error in sections 3.8.3 and 3.10.3",
    ),
    (
        r"^PUBLISH: (wildcard in topic name|DUP set on a QoS 0|empty topic name)",
        0x82,
        0x81,
        "PUBLISH rules without a stated class",
    ),
    (
        r"^SUBSCRIBE: (maximum QoS 3|retain handling 3)",
        0x82,
        0x81,
        "QoS 3 / Retain Handling 3 are protocol errors in section 3.8.3.1",
    ),
]
_MOSQUITTO_RES: Final = [(re.compile(p), spec, mosq) for p, spec, mosq, _ in MOSQUITTO_CODES]


def mosquitto_code(reason: str, code: int) -> int:
    """The code Mosquitto gives for the error ``reason`` the spec answers with ``code``."""
    for pattern, spec, mosq in _MOSQUITTO_RES:
        if code == spec and pattern.search(reason):
            return mosq
    return code


def apply_profile(config: Any, name: str) -> Any:
    """``config`` (an MqttConfig) with the row ``name`` of :data:`PROFILES` applied."""
    row = PROFILES.get(name)
    if row is None:
        known = ", ".join(sorted(PROFILES))
        raise MqttConfigError(f"mqtt.profile: unknown profile {name!r} (known: {known})")
    return dataclasses.replace(config, profile=name, **row)
