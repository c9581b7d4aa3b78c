"""Property tests of the ClientHello parser on real OpenSSL hellos, their
fragmentations and their mutations: the only outcomes are None, a ClientHello,
NotTLS or MalformedClientHello (mitmproxy fuzzes its parser the same way)."""

from __future__ import annotations

import struct
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.tls_hellos import build_message, real_hello, reframe, split_hello

from portcullis.basics.errors import MalformedClientHello, NotTLS
from portcullis.wire import tls
from portcullis.wire.tls import MAX_HELLO_SIZE, ClientHello, parse_client_hello

FUZZ = settings(max_examples=400, deadline=None)


def length_fields(flight: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every length field of a single-record hello."""
    fields = [(3, 2), (6, 3)]
    i = 9 + 34
    fields.append((i, 1))
    i += 1 + flight[i]
    fields.append((i, 2))
    i += 2 + int.from_bytes(flight[i : i + 2], "big")
    fields.append((i, 1))
    i += 1 + flight[i]
    fields.append((i, 2))
    i += 2
    while i < len(flight):
        ext_type, ext_len = struct.unpack_from("!HH", flight, i)
        fields.append((i + 2, 2))
        if ext_type in (0, 16):  # server_name / ALPN: the inner list length
            fields.append((i + 4, 2))
        if ext_type == 0:
            fields.append((i + 7, 2))
        i += 4 + ext_len
    return fields


HELLOS = [real_hello("us.icr.io"), real_hello(None), real_hello("dd0.icr.io", ["h2", "http/1.1"])]
EXPECTED = [parse_client_hello(h) for h in HELLOS]
FIELDS = [length_fields(h) for h in HELLOS]


def _vec(data: bytes, at: int, width: int) -> tuple[bytes, int]:
    """A length-prefixed vector at `at`: (contents, offset after it)."""
    (size,) = struct.unpack_from("!B" if width == 1 else "!H", data, at)
    stop = at + width + size
    if stop > len(data):
        raise struct.error("vector overruns")
    return data[at + width : stop], stop


def strict_reading(data: bytes, record_bytes: int) -> ClientHello:
    """An independent, struct-based reading of an accepted hello.

    The parser under test may refuse more than this, never accept less: each
    accepted hello must be exactly well-formed here, with the same fields.
    """
    message, at = b"", 0
    while at < record_bytes:
        kind, _, size = struct.unpack_from("!BHH", data, at)
        assert kind == 0x16 and 0 < size <= 1 << 14
        message, at = message + data[at + 5 : at + 5 + size], at + 5 + size
    assert at == record_bytes and message[0] == 1
    assert int.from_bytes(message[1:4], "big") == len(message) - 4
    body = message[4:]
    session_id, at = _vec(body, 34, 1)
    suites, at = _vec(body, at, 2)
    methods, at = _vec(body, at, 1)
    assert len(session_id) <= 32 and suites and len(suites) % 2 == 0 and methods
    if at == len(body):
        return ClientHello(None, False, (), record_bytes)
    blob, at = _vec(body, at, 2)
    assert at == len(body)
    exts: dict[int, bytes] = {}
    while blob:
        ext_type, size = struct.unpack_from("!HH", blob)
        assert ext_type not in exts and 4 + size <= len(blob)
        exts[ext_type], blob = blob[4 : 4 + size], blob[4 + size :]
    sni = None
    if 0 in exts:
        names, rest = _vec(exts[0], 0, 2)
        assert names and rest == len(exts[0])
        while names:
            name, after = _vec(names, 1, 2)
            if names[0] == 0:
                assert sni is None and name and name.isascii()
                sni = name.decode()
            names = names[after:]
    alpn: list[str] = []
    if 16 in exts:
        protocols, rest = _vec(exts[16], 0, 2)
        assert protocols and rest == len(exts[16])
        while protocols:
            protocol, after = _vec(protocols, 0, 1)
            assert protocol
            alpn.append(protocol.decode("latin-1"))
            protocols = protocols[after:]
    return ClientHello(sni, 0xFE0D in exts, tuple(alpn), record_bytes)


def outcome(data: bytes, max_size: int = MAX_HELLO_SIZE) -> ClientHello | str | None:
    try:
        hello = parse_client_hello(data, max_size)
    except (NotTLS, MalformedClientHello) as exc:
        assert str(exc)
        return "error"
    if hello is not None:
        assert 0 < hello.record_bytes <= min(len(data), max_size)
        assert strict_reading(data, hello.record_bytes) == hello
    return hello


def test_real_hellos_parse() -> None:
    assert [h.sni if h else "?" for h in EXPECTED] == ["us.icr.io", None, "dd0.icr.io"]


def test_every_truncation_needs_more() -> None:
    for flight in HELLOS:
        for variant in (flight, reframe(flight[5:], [1]), reframe(flight[5:], [3, 100])):
            for cut in range(len(variant)):
                assert outcome(variant[:cut]) is None, cut


@FUZZ
@given(st.integers(0, len(HELLOS) - 1), st.lists(st.integers(1, 700), min_size=1, max_size=6))
def test_any_fragmentation_gives_the_same_hello(which: int, sizes: list[int]) -> None:
    flight = reframe(HELLOS[which][5:], sizes)
    expected = EXPECTED[which]
    assert expected is not None
    assert outcome(flight) == ClientHello(
        expected.sni, expected.has_ech, expected.alpn, record_bytes=len(flight)
    )


@FUZZ
@given(
    st.integers(0, len(HELLOS) - 1),
    st.binary(min_size=1, max_size=40),
    st.lists(st.integers(1, 700), min_size=1, max_size=4),
)
def test_extra_handshake_bytes_in_the_last_record(
    which: int, extra: bytes, sizes: list[int]
) -> None:
    flight = reframe(HELLOS[which][5:] + extra, sizes)
    result = outcome(flight)
    # Refused, unless the extra bytes happen to start a record of their own.
    assert result == "error" or (
        isinstance(result, ClientHello) and flight[result.record_bytes] == 0x16
    )


@FUZZ
@given(st.integers(0, len(HELLOS) - 1), st.binary(max_size=300))
def test_bytes_after_the_hello_change_nothing(which: int, junk: bytes) -> None:
    assert outcome(HELLOS[which] + junk) == EXPECTED[which]


@FUZZ
@given(
    st.integers(0, len(HELLOS) - 1),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
    st.booleans(),
)
def test_mutated_bytes(which: int, edits: list[tuple[int, int]], fragment: bool) -> None:
    data = bytearray(HELLOS[which])
    for where, byte in edits:
        data[where % len(data)] = byte
    outcome(bytes(data))
    if fragment:  # the same damage seen through the reassembly path
        outcome(reframe(bytes(data[5:]), [97]))


@FUZZ
@given(st.integers(0, len(HELLOS) - 1), st.data())
def test_mutated_length_fields(which: int, data: st.DataObject) -> None:
    flight = bytearray(HELLOS[which])
    for _ in range(data.draw(st.integers(1, 2))):
        at, width = data.draw(st.sampled_from(FIELDS[which]))
        value = data.draw(st.integers(0, (1 << (8 * width)) - 1))
        flight[at : at + width] = value.to_bytes(width, "big")
    outcome(bytes(flight))
    outcome(bytes(flight), max_size=data.draw(st.integers(1, 600)))


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    outcome(data)
    # Behind a plausible record and handshake header, to reach the body parser.
    body = struct.pack("!B", 1) + len(data).to_bytes(3, "big") + data
    outcome(struct.pack("!BHH", 0x16, 0x0303, len(body)) + body)
    outcome(reframe(body, [len(data) // 3 + 1]))


@FUZZ
@given(st.integers(0, len(HELLOS) - 1), st.randoms(use_true_random=False))
def test_extension_order_does_not_matter(which: int, rnd: Random) -> None:
    prefix, exts = split_hello(HELLOS[which])
    rnd.shuffle(exts)
    message = build_message(prefix, exts)
    assert outcome(reframe(message, [len(message)])) == EXPECTED[which]


def _list16(entries: list[bytes], trailing: bytes) -> bytes:
    blob = b"".join(entries) + trailing
    return len(blob).to_bytes(2, "big") + blob


# server_name and ALPN bodies: right list length, entries of any kind and size
# (empty ones included), and up to 2 stray bytes after the last entry.
_SNI_DATA = st.builds(
    _list16,
    st.lists(
        st.tuples(st.sampled_from([0, 0, 1, 255]), st.binary(max_size=6)).map(
            lambda e: bytes([e[0]]) + len(e[1]).to_bytes(2, "big") + e[1]
        ),
        max_size=3,
    ),
    st.binary(max_size=2),
)
_ALPN_DATA = st.builds(
    _list16,
    st.lists(st.binary(max_size=4).map(lambda p: bytes([len(p)]) + p), max_size=3),
    st.binary(max_size=1),
)
_EXTENSION = st.one_of(
    st.tuples(st.just(0), _SNI_DATA),
    st.tuples(st.just(16), _ALPN_DATA),
    st.tuples(
        st.one_of(st.sampled_from([0, 16, 0xFE0D, 21]), st.integers(0, 0xFFFF)),
        st.one_of(
            st.binary(max_size=12),
            # Lists whose 2-byte length is right, so the entries get parsed.
            st.binary(max_size=12).map(lambda b: len(b).to_bytes(2, "big") + b),
        ),
    ),
)


@FUZZ
@given(st.lists(_EXTENSION, max_size=5), st.binary(max_size=3), st.integers(1, 80))
def test_random_extensions_in_a_real_hello(
    exts: list[tuple[int, bytes]], tail: bytes, fragment: int
) -> None:
    prefix, _ = split_hello(HELLOS[0])
    # `tail` makes the extensions block end off its declared length.
    message = build_message(prefix, exts) + tail
    message = message[:1] + (len(message) - 4).to_bytes(3, "big") + message[4:]
    outcome(reframe(message, [len(message)]))
    outcome(reframe(message, [fragment]))


def _vector(width: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda b: len(b).to_bytes(width, "big") + b)


_SUITES = st.lists(st.binary(min_size=2, max_size=2), min_size=1, max_size=3).map(
    lambda pairs: len(b"".join(pairs)).to_bytes(2, "big") + b"".join(pairs)
)
# Session id, cipher suites, compression methods, extensions: each piece in its
# place and mostly well-formed, so that every later check gets reached.
_ORDERED_BODY = st.tuples(
    st.one_of(_vector(1, 34), st.sampled_from([32, 33]).map(lambda n: bytes([n]) + bytes(n))),
    st.one_of(_SUITES, _vector(2, 8)),
    _vector(1, 3),
    st.one_of(st.just(b""), st.binary(max_size=3), _vector(2, 12)),
).map(b"".join)
_SHUFFLED_BODY = st.lists(
    st.one_of(_vector(1, 34), _vector(2, 8), _vector(1, 3), st.binary(max_size=3)), max_size=5
).map(b"".join)


@FUZZ
@given(st.one_of(_ORDERED_BODY, _SHUFFLED_BODY), st.integers(1, 40))
def test_random_hello_bodies(tail: bytes, fragment: int) -> None:
    body = bytes(34) + tail  # legacy_version and random
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    outcome(reframe(message, [len(message)]))
    outcome(reframe(message, [fragment]))


@FUZZ
@given(
    st.integers(0, len(HELLOS) - 1),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_a_remembered_layout_reads_as_a_fresh_walk(
    which: int, edits: list[tuple[int, int]]
) -> None:
    # The parser keeps the layout of the last hello of each extensions length
    # (tls._Layout); a hello damaged anywhere must read the same with the real
    # hello's layout remembered as with nothing remembered.
    data = bytearray(HELLOS[which])
    for where, byte in edits:
        data[where % len(data)] = byte
    parse_client_hello(HELLOS[which])
    remembered = outcome(bytes(data))
    tls._LAYOUTS.clear()
    assert outcome(bytes(data)) == remembered
