"""The TLS wire formats shared by the edge and the device simulator."""

from __future__ import annotations

import pytest

from edge.tls.errors import TlsError, WireFormatError
from edge.tls.verdict import alert_record, cleartext_alert
from edge.tls.wire import ALERT_CODES, ALERT_NAMES, CT_ALERT, Cursor, record_header


def test_alert_tables_are_inverse() -> None:
    assert ALERT_NAMES[48] == "unknown_ca"
    assert ALERT_CODES["certificate_required"] == 116
    assert all(ALERT_NAMES[code] == name for name, code in ALERT_CODES.items())


def test_record_header_needs_five_bytes() -> None:
    assert record_header(b"\x16\x03\x01\x00") is None
    assert record_header(b"\x16\x03\x01\x02\x00") == (22, 0x0301, 512)
    assert record_header(bytearray(b"xx\x15\x03\x03\x00\x02"), 2) == (CT_ALERT, 0x0303, 2)


def test_alert_record_round_trips_through_the_header() -> None:
    record = alert_record("unknown_ca")
    assert record_header(record) == (CT_ALERT, 0x0303, 2)
    assert cleartext_alert(b"\x16\x03\x03\x00\x01\x00" + record) == "unknown_ca"


def test_cursor_reads_integers_and_vectors() -> None:
    cur = Cursor(b"\x01\x00\x02\x00\x00\x03\x02ab\x00\x01z")
    assert cur.u8() == 1
    assert cur.u16() == 2
    assert cur.u24() == 3
    assert cur.vec(1) == b"ab"
    inner = cur.sub(2)
    assert inner.take(1) == b"z"
    assert inner.at_end()
    assert cur.remaining == 0
    assert cur.at_end()


def test_cursor_past_the_end_is_a_wire_format_error() -> None:
    cur = Cursor(b"\x05abc")
    with pytest.raises(WireFormatError, match="truncated") as info:
        cur.vec(1)
    # One error tree for edge.tls, and a ValueError for callers that expect one.
    assert isinstance(info.value, TlsError)
    assert isinstance(info.value, ValueError)
    assert cur.pos == 1
