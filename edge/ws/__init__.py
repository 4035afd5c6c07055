"""WebSocket on the edge's HTTPS port, on the websockets library's sans-I/O protocol.

==========================  ==================================================
:mod:`edge.ws.endpoint`     one WebSocket connection: handshake, frames, close
                            codes, ``ws.connected`` / ``ws.closed`` events
:mod:`edge.ws.jsonproto`    the ``/ws`` JSON protocol: documentation, codec
:mod:`edge.ws.session`      one ``/ws`` connection against the core (sans-I/O)
:mod:`edge.ws.jsonapp`      ``/ws`` bound to a WebSocket connection
:mod:`edge.ws.mqtt`         ``/mqtt``: MQTT over WebSocket on the broker
:mod:`edge.ws.coreops`      publish / read-retained as the HTTP API does them
==========================  ==================================================

Errors (defined in :mod:`edge.ws.jsonproto`)::

    WsError                   root of edge.ws
    ├── WsCloseError          the connection must close with a code and a reason
    └── OpError               one /ws op is refused; the connection stays open

Foreign errors stay outside: the websockets protocol reports framing errors as
close codes (1002, 1009) rather than exceptions, and nothing here raises into
the TLS layer's callbacks.
"""
