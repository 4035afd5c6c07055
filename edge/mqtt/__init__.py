"""edge.mqtt: the edge's own MQTT implementation, sans-I/O at its heart.

The codec speaks MQTT 3.1, 3.1.1 and 5.0; the broker speaks 3.1/3.1.1 (it answers
an MQTT 5 CONNECT with return code 1, unsupported protocol level, for now).

=====================  ==========================================================
:mod:`.codec`          packets, ``encode``, incremental ``Parser`` (client and
                       server side; the device simulator uses it too)
:mod:`.properties`     MQTT 5 properties: ``Properties``, the identifier table
:mod:`.reasons`        MQTT 5 reason codes: the table, ``reason_name``
:mod:`.broker`         ``MqttBroker`` (sessions) and ``MqttConnection`` (one
                       connection: bytes in, bytes out, ``tick(now)``)
:mod:`.protocol`       ``MqttServerProtocol``: the asyncio adapter, any transport
:mod:`.errors`         the error tree below
=====================  ==========================================================

Errors::

    MqttError                 root of edge.mqtt                      reason_code 0x80
    ├── MalformedPacket       bytes that do not parse as MQTT                    0x81
    ├── ProtocolViolation     a packet the protocol forbids there                0x82
    │   └── PacketTooLarge    over the configured maximum, refused unbuffered    0x95
    └── MqttConfigError       an invalid [mqtt] setting (also a ValueError)

The broker turns every packet error into a closed connection with a reason (an
``mqtt.disconnected`` event); :class:`~edge.mqtt.broker.MqttConfig` raises
:class:`~edge.mqtt.errors.MqttConfigError` naming the key.
"""
