"""The edge's TLS termination: the edge drives TLS itself over ``ssl.MemoryBIO``.

Why: asyncio's ``create_server(ssl=...)`` drops a failed handshake without telling
the server why and without sending the alert. Here every byte passes through
code the edge owns, so refusals carry their reason and the device sees the alert.

Modules, from bytes up:

=================  ==============================================================
``wire``           ssl-free wire formats shared with ``devices``: alert names,
                   record headers, a bounds-checked cursor
``clienthello``    sans-I/O reader of the client's cleartext flight (SNI, ALPN,
                   versions, suites; the TLS 1.2 client certificate; non-TLS
                   first bytes classified in plain words)
``session``        ``TlsServerSession``: sans-I/O handshake + records over MemoryBIO
``verdict``        ``ssl.SSLError`` -> alert, verify code, reason and hint
``contexts``       one cached ``ssl.SSLContext`` per certificate set version
``verifiedchain``  a refused device's certificate from the chain OpenSSL built
                   to verify it (ctypes, read only after a failed handshake)
``keylog``         the fallback where that chain cannot be read: decrypt the
                   TLS 1.3 flight with secrets from a key log FIFO, read lazily
``peer``           an accepted device's identity and event facts from what OpenSSL
                   already decoded (``getpeercert()``), exact or not at all
``connection``     the asyncio layer: ``TlsEndpoint`` (one per listener),
                   ``EdgeTlsProtocol`` (one per TCP connection), ``TlsTransport``
                   (what MQTT/HTTP adapters write to), limits, deadlines, events;
                   the application protocol chosen by ``edge.mux.select_protocol``
=================  ==============================================================

Errors (see :mod:`edge.tls.errors`)::

    TlsError
    ├── ClientHelloError
    ├── TlsConfigError
    ├── WireFormatError (also a ValueError)
    └── IdentityError

A refused device is not an exception: it is a ``tls.refused`` event.
"""
