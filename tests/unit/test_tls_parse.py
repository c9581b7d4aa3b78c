"""ClientHello parsing against real hellos from Python's ssl module (OpenSSL),
and byte-level edits of them for the cases no real client sends."""

from __future__ import annotations

import pytest
from tests.support.tls_hellos import (
    build_message,
    real_hello,
    records,
    server_name,
    split_hello,
    with_extensions,
)

from portcullis.basics.errors import MalformedClientHello, NotTLS
from portcullis.basics.vocabulary import Reason
from portcullis.wire import tls
from portcullis.wire.tls import ClientHello, parse_client_hello, peek_is_tls

SNI_HELLO = real_hello("us.icr.io")
NO_SNI_HELLO = real_hello(None)
ALPN_HELLO = real_hello("dd0.icr.io", ["h2", "http/1.1"])


def test_real_hello_with_sni() -> None:
    assert parse_client_hello(SNI_HELLO) == ClientHello(
        sni="us.icr.io", has_ech=False, alpn=(), record_bytes=len(SNI_HELLO)
    )


def test_real_hello_without_sni() -> None:
    hello = parse_client_hello(NO_SNI_HELLO)
    assert hello is not None and hello.sni is None and not hello.has_ech


def test_real_hello_with_alpn() -> None:
    hello = parse_client_hello(ALPN_HELLO)
    assert hello is not None
    assert (hello.sni, hello.alpn) == ("dd0.icr.io", ("h2", "http/1.1"))


def test_sni_is_reported_as_sent_not_normalized() -> None:
    flight = with_extensions(SNI_HELLO, {0: server_name((0, b"US.ICR.IO."))}, [])
    hello = parse_client_hello(flight)
    assert hello is not None and hello.sni == "US.ICR.IO."


def test_test_helpers_round_trip_a_real_hello() -> None:
    # Guards the edits below: rebuilding without changes gives the same bytes.
    assert with_extensions(SNI_HELLO, {}, []) == SNI_HELLO


@pytest.mark.parametrize("flight", [SNI_HELLO, ALPN_HELLO], ids=["sni", "alpn"])
def test_every_prefix_needs_more(flight: bytes) -> None:
    for cut in range(len(flight)):
        assert parse_client_hello(flight[:cut]) is None, cut


def test_bytes_after_the_hello_are_not_consumed() -> None:
    change_cipher_spec = b"\x14\x03\x03\x00\x01\x01"
    hello = parse_client_hello(SNI_HELLO + change_cipher_spec + b"junk")
    assert hello is not None and hello.record_bytes == len(SNI_HELLO)


def test_bytearray_is_accepted_and_left_resizable() -> None:
    buf = bytearray(ALPN_HELLO)
    assert parse_client_hello(buf) == parse_client_hello(ALPN_HELLO)
    # A parser that kept a memoryview export would make this raise BufferError.
    buf += b"more"
    del buf[:10]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 300])
def test_hello_fragmented_over_records(size: int) -> None:
    message = SNI_HELLO[5:]
    flight = records(message, size)
    assert flight != SNI_HELLO
    hello = parse_client_hello(flight)
    assert hello == ClientHello("us.icr.io", False, (), len(flight))
    for cut in range(len(flight)):
        assert parse_client_hello(flight[:cut]) is None, cut


def test_hello_larger_than_one_record() -> None:
    # Padding (extension 21) bigger than a record forces fragmentation.
    flight = with_extensions(SNI_HELLO, {21: None}, [(21, bytes(20000))])
    assert flight.count(b"\x16\x03\x01") >= 2
    hello = parse_client_hello(flight)
    assert hello is not None and hello.sni == "us.icr.io" and hello.record_bytes == len(flight)


def test_ech_extension_is_reported() -> None:
    flight = with_extensions(SNI_HELLO, {}, [(0xFE0D, b"\x00" + bytes(40))])
    hello = parse_client_hello(flight)
    assert hello is not None and hello.has_ech and hello.sni == "us.icr.io"


def test_hello_without_extensions() -> None:
    prefix, _ = split_hello(SNI_HELLO)
    body = prefix  # no extensions block at all, as TLS 1.2 permits
    flight = records(b"\x01" + len(body).to_bytes(3, "big") + body)
    assert parse_client_hello(flight) == ClientHello(None, False, (), len(flight))


def test_unknown_name_type_is_skipped() -> None:
    sni = server_name((7, b"other"), (0, b"us.icr.io"))
    hello = parse_client_hello(with_extensions(SNI_HELLO, {0: sni}, []))
    assert hello is not None and hello.sni == "us.icr.io"


MALFORMED_EDITS = {
    "two host names": (
        {0: server_name((0, b"us.icr.io"), (0, b"evil.example"))},
        [],
        "two host_name",
    ),
    "empty host name": ({0: server_name((0, b""))}, [], "empty host_name"),
    "non-ascii host name": ({0: server_name((0, "bücher.example".encode()))}, [], "not ASCII"),
    "empty server_name list": ({0: b"\x00\x00"}, [], "server_name list"),
    "empty server_name extension": ({0: b""}, [], "server_name list"),
    "server_name list overruns": ({0: b"\x00\x20\x00\x00\x03abc"}, [], "server_name list"),
    "server_name entry overruns": ({0: b"\x00\x06\x00\x00\x09abc"}, [], "entry overruns"),
    "duplicate extension": (
        {},
        [(16, b"\x00\x03\x02h2"), (16, b"\x00\x03\x02h2")],
        "0x0010 appears twice",
    ),
    "second server_name extension": (
        {},
        [(0, server_name((0, b"evil.example")))],
        "0x0000 appears twice",
    ),
    "empty ALPN list": ({16: b"\x00\x00"}, [], "ALPN list"),
    "empty ALPN protocol": ({16: b"\x00\x01\x00"}, [], "ALPN protocol"),
    "ALPN protocol overruns": ({16: b"\x00\x03\x05h2"}, [], "ALPN protocol"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_EDITS))
def test_malformed_extension_edits(case: str) -> None:
    edit, extra, message = MALFORMED_EDITS[case]
    source = ALPN_HELLO if 16 in edit else SNI_HELLO
    with pytest.raises(MalformedClientHello, match=message):
        parse_client_hello(with_extensions(source, edit, extra))


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


SID_AT = 5 + 4 + 34  # offset of the session id length in a single-record flight


@pytest.mark.parametrize(
    ("name", "message", "flight"),
    [
        ("server hello first", "type 2, not 1", _patch(SNI_HELLO, 5, b"\x02")),
        ("session id of 33", "session id of 33", _patch(SNI_HELLO, SID_AT, b"\x21")),
        (
            "non-record after short record",
            "record of type 0",
            _patch(SNI_HELLO, 6, b"\x00\x02\x10") + bytes(5),
        ),
        ("bytes after hello in its record", "bytes after", records(SNI_HELLO[5:] + b"\x01\x00")),
        ("zero-length record", "of 0 bytes", b"\x16\x03\x01\x00\x00" + SNI_HELLO),
        ("record over 2^14", "16385 bytes", b"\x16\x03\x01\x40\x01" + bytes(0x4001)),
        (
            "alert between fragments",
            "type 21",
            records(SNI_HELLO[5:105]) + records(SNI_HELLO[105:], 1 << 14, 0x15),
        ),
        (
            "bad version in second record",
            "bad record version",
            records(SNI_HELLO[5:105]) + b"\x16\x02" + SNI_HELLO[105:],
        ),
        (
            "no cipher suites",
            "cipher suites length 0",
            _patch(SNI_HELLO, SID_AT + 1 + SNI_HELLO[SID_AT], b"\x00\x00"),
        ),
    ],
)
def test_malformed_structure(name: str, message: str, flight: bytes) -> None:
    with pytest.raises(MalformedClientHello, match=message):
        parse_client_hello(flight)


def test_overrunning_extension_length() -> None:
    prefix, exts = split_hello(SNI_HELLO)
    message = bytearray(build_message(prefix, exts))
    # The first extension's own length, pointed past the end of the hello.
    at = 4 + len(prefix) + 2 + 2
    message[at : at + 2] = b"\xff\xf0"
    with pytest.raises(MalformedClientHello):
        parse_client_hello(records(bytes(message)))


@pytest.mark.parametrize("delta", [-1, 1, -200])
def test_extensions_length_must_match(delta: int) -> None:
    prefix, _ = split_hello(SNI_HELLO)
    at = 5 + 4 + len(prefix)
    total = int.from_bytes(SNI_HELLO[at : at + 2], "big")
    with pytest.raises(MalformedClientHello):
        parse_client_hello(_patch(SNI_HELLO, at, (total + delta).to_bytes(2, "big")))


def test_max_size_bounds_the_hello() -> None:
    assert parse_client_hello(SNI_HELLO, max_size=len(SNI_HELLO)) is not None
    with pytest.raises(MalformedClientHello, match="larger than"):
        parse_client_hello(SNI_HELLO, max_size=len(SNI_HELLO) - 1)
    fragmented = records(SNI_HELLO[5:], 50)
    with pytest.raises(MalformedClientHello):
        parse_client_hello(fragmented, max_size=len(SNI_HELLO))
    # Refused from the declared length alone, before the bytes arrive.
    with pytest.raises(MalformedClientHello):
        parse_client_hello(fragmented[:60], max_size=400)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"CONNECT us.icr.io:443 HTTP/1.1\r\n",
        b"\x80\x2e\x01\x03\x01\x00\x15",  # SSLv2-compatible hello
        b"\x16\x02\x00",
        b"\x16\x03\x05",
        b"\x17\x03\x03\x00\x10",  # application data
        b"\x15\x03\x03\x00\x02\x02\x28",  # alert
        b"\x00",
    ],
)
def test_not_tls(data: bytes) -> None:
    assert peek_is_tls(data) is False
    with pytest.raises(NotTLS) as info:
        parse_client_hello(data)
    assert info.value.reason is Reason.NOT_TLS


def test_not_tls_messages_say_what_was_seen() -> None:
    with pytest.raises(NotTLS, match="plain HTTP"):
        parse_client_hello(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotTLS, match="SSLv2"):
        parse_client_hello(b"\x80\x2e\x01\x03\x01")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x16", None),
        (b"\x16\x03", None),
        (b"\x16\x03\x01", True),
        (b"\x16\x03\x00", True),
        (b"\x16\x03\x04", True),
        (b"\x16\x03\x05", False),
        (b"G", False),
        (b"\x16\x02", False),
        (SNI_HELLO, True),
    ],
)
def test_peek_is_tls(data: bytes, expected: bool | None) -> None:
    assert peek_is_tls(data) is expected


def test_error_types_are_value_errors() -> None:
    assert issubclass(NotTLS, ValueError) and issubclass(MalformedClientHello, ValueError)
    assert not issubclass(NotTLS, MalformedClientHello)


def test_a_repeated_extension_is_refused_after_its_layout_was_seen() -> None:
    # The parser remembers the layout of a hello (wire/tls.py, _Layout); one
    # with the same lengths in the same order but a type repeated must still
    # be refused.
    prefix, exts = split_hello(SNI_HELLO)
    seen = records(build_message(prefix, [*exts, (0xAAAA, b"1234"), (0xBBBB, b"5678")]))
    repeated = records(build_message(prefix, [*exts, (0xAAAA, b"1234"), (0xAAAA, b"5678")]))
    hello = parse_client_hello(seen)
    assert hello is not None and hello.sni == "us.icr.io"
    with pytest.raises(MalformedClientHello, match="0xaaaa appears twice"):
        parse_client_hello(repeated)


def test_a_hello_of_many_extensions_is_read_but_its_layout_not_kept() -> None:
    prefix, exts = split_hello(SNI_HELLO)
    many = [*exts, *((0x1000 + k, b"") for k in range(tls._MAX_REMEMBERED_EXTENSIONS))]
    flight = records(build_message(prefix, many))
    tls._LAYOUTS.clear()
    for _ in range(2):
        hello = parse_client_hello(flight)
        assert hello is not None and hello.sni == "us.icr.io"
    assert tls._LAYOUTS == {}
