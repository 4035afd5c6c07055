"""edge.mqtt: the edge's own MQTT implementation, sans-I/O at its heart.

The codec and the broker speak MQTT 3.1, 3.1.1 and 5.0, chosen per connection by its
CONNECT: one broker and one session model, the level confined to the codec and the
connection's edge (the CONNACK, acknowledgements and PUBLISH encodings).

=====================  ==========================================================
:mod:`.codec`          packets, ``encode``, incremental ``Parser`` (client and
                       server side; the device simulator uses it too)
:mod:`.properties`     MQTT 5 properties: ``Properties``, the identifier table
:mod:`.reasons`        MQTT 5 reason codes: the table, ``reason_name``
:mod:`.broker`         ``MqttBroker`` (sessions) and ``MqttConnection`` (one
                       connection: bytes in, bytes out, ``tick(now)``)
:mod:`.profiles`       cloud profiles (aws-iot-core, mosquitto, emqx): limits,
                       codes and CONNACK of a production broker, with sources
:mod:`.protocol`       ``MqttServerProtocol``: the asyncio adapter, any transport
:mod:`.store`          durable state: the ``MqttStore`` interface the broker
                       records changes through, ``MemoryStore``
:mod:`.sqlite_store`   ``SqliteMqttStore``: the default store (SQLite, WAL,
                       group commit; acks wait for the commit)
:mod:`.errors`         the error tree below
=====================  ==========================================================

Errors::

    MqttError                 root of edge.mqtt                      reason_code 0x80
    ├── MalformedPacket       bytes that do not parse as MQTT                    0x81
    ├── ProtocolViolation     a packet the protocol forbids there                0x82
    │   └── PacketTooLarge    over the configured maximum, refused unbuffered    0x95
    ├── MqttConfigError       an invalid [mqtt] setting (also a ValueError)
    └── MqttStoreError        the MQTT state file cannot be opened, locked or read

The broker turns every packet error into a closed connection with a reason (an
``mqtt.disconnected`` event; an MQTT 5 client first gets a DISCONNECT, or a CONNACK,
with the error's ``reason_code`` and the reason as its Reason String); :class:`~edge.mqtt.broker.MqttConfig` raises
:class:`~edge.mqtt.errors.MqttConfigError` naming the key.
"""
