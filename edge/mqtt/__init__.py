"""edge.mqtt: the edge's own MQTT 3.1/3.1.1 implementation, sans-I/O at its heart.

=====================  ==========================================================
:mod:`.codec`          packets, ``encode``, incremental ``Parser`` (client and
                       server side; the device simulator uses it too)
:mod:`.broker`         ``MqttBroker`` (sessions) and ``MqttConnection`` (one
                       connection: bytes in, bytes out, ``tick(now)``)
:mod:`.protocol`       ``MqttServerProtocol``: the asyncio adapter, any transport
:mod:`.errors`         the error tree below
=====================  ==========================================================

Errors::

    MqttError                 root of edge.mqtt
    ├── MalformedPacket       bytes that do not parse as MQTT
    ├── ProtocolViolation     a packet the protocol forbids there
    │   └── PacketTooLarge    over the configured maximum, refused unbuffered
    └── MqttConfigError       an invalid [mqtt] setting (also a ValueError)

The broker turns every packet error into a closed connection with a reason (an
``mqtt.disconnected`` event); :class:`~edge.mqtt.broker.MqttConfig` raises
:class:`~edge.mqtt.errors.MqttConfigError` naming the key.
"""
