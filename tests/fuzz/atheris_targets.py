"""Coverage-guided fuzz targets (atheris) for the parsers that take bytes from outside.

Run one: ``python tests/fuzz/atheris_targets.py TARGET [libFuzzer flags] [corpus dirs]``;
``make fuzz`` runs each for longer, ``tests/fuzz/test_atheris_smoke.py`` briefly.
Each target lets through only the parser's documented error; anything else is a
crash that libFuzzer reports (and saves under ``-artifact_prefix``). The seed
corpus of each target is ``tests/fuzz/corpus/TARGET/``. Run with
``EDGESIM_PURE_PYTHON=1`` so that the sources, not the compiled modules, are
instrumented.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

# Imported before instrumentation: only this project's parsers are instrumented
# (instrumenting cryptography and the stdlib made each start take seconds).
import cryptography.hazmat.primitives.serialization.pkcs7
import cryptography.hazmat.primitives.serialization.pkcs12
import cryptography.x509  # noqa: F401

with atheris.instrument_imports(include=["certs", "edge"]):
    from certs.bundle import detect_format, load_any_certificates
    from certs.errors import BundleError, CertsError, ConfigError, PassphraseError
    from certs.inspect import inspect_data, render
    from certs.opensslconf import parse_config
    from edge.mqtt.codec import Parser
    from edge.mqtt.errors import MqttError
    from edge.tls.clienthello import ClientFlightReader
    from edge.ws.jsonproto import WsError, parse_op


def _pieces(data: bytes) -> list[bytes]:
    # The first byte chooses where the rest is cut (chunked feeding), so the
    # fuzzer explores fragmentation as well as content.
    if not data:
        return []
    step = data[0] % 16 + 1
    body = data[1:]
    return [body[i : i + step] for i in range(0, len(body), step)]


def _mqtt(level: int, server_side: bool) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        parser = Parser(server_side=server_side, protocol_level=level)
        try:
            for piece in _pieces(data):
                parser.feed(piece)
        except MqttError:
            pass

    return target


def clienthello(data: bytes) -> None:
    """The ClientHello reader never raises, whatever the bytes and their pieces."""
    reader = ClientFlightReader()
    for piece in _pieces(data):
        reader.receive_data(piece)
    _ = (reader.done, reader.client_certificates, reader.encrypted_records)


def wsjson(data: bytes) -> None:
    """/ws messages raise only WsError."""
    with contextlib.suppress(WsError):
        parse_op(data.decode("utf-8", "replace"))


def opensslconf(data: bytes) -> None:
    """OpenSSL config text raises only ConfigError."""
    with contextlib.suppress(ConfigError):
        parse_config(data.decode("utf-8", "replace"), environ={"HOME": "/home/fuzz"})


def bundle(data: bytes) -> None:
    """Uploads are classified without raising and load or raise BundleError/PassphraseError."""
    detect_format(data)
    with contextlib.suppress(BundleError, PassphraseError):
        load_any_certificates(data, source="fuzz")


def inspect(data: bytes) -> None:
    """``edgesim pki inspect`` describes any file (certificate, CRL, CSR, key) or raises CertsError."""
    with contextlib.suppress(CertsError):
        render(inspect_data(data, source="fuzz"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mqtt311-server": _mqtt(4, True),
    "mqtt311-client": _mqtt(4, False),
    "mqtt5-server": _mqtt(5, True),
    "mqtt5-client": _mqtt(5, False),
    "clienthello": clienthello,
    "wsjson": wsjson,
    "opensslconf": opensslconf,
    "bundle": bundle,
    "inspect": inspect,
}


def main() -> None:
    """``atheris_targets.py TARGET [libFuzzer arguments]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
