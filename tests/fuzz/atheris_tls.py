"""Coverage-guided fuzzing (atheris/libFuzzer) of the ClientHello parser; run by
`make fuzz`, never by pytest.

Seeds are real OpenSSL hellos. Each input is parsed as sent, behind a valid
record and handshake header (to reach the body parser quickly), and cut into
small records (to reach the reassembly path). Only None, a ClientHello,
NotTLS or MalformedClientHello may come out, and a parsed hello must not depend
on bytes after it.

    python tests/fuzz/atheris_tls.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main
from tests.support.tls_hellos import real_hello

with atheris.instrument_imports():
    from portcullis.basics.errors import ClientHelloError, NotTLS
    from portcullis.wire.tls import ClientHello, parse_client_hello, peek_is_tls


def reframe(message: bytes, size: int) -> bytes:
    out = bytearray()
    for i in range(0, len(message), size):
        chunk = message[i : i + size]
        out += struct.pack("!BHH", 0x16, 0x0301, len(chunk)) + chunk
    return bytes(out)


def check(data: bytes, max_size: int = 65536) -> ClientHello | None:
    try:
        hello = parse_client_hello(data, max_size)
    except NotTLS as exc:
        # NotTLS is only for streams that do not start like a TLS record.
        if peek_is_tls(data) is not False:
            raise AssertionError(f"NotTLS for a TLS-looking start: {data[:5].hex()}") from exc
        return None
    except ClientHelloError as exc:
        if not str(exc):
            raise AssertionError("an error without a message") from exc
        return None
    if hello is None:
        return None
    if not (0 < hello.record_bytes <= min(len(data), max_size)):
        raise AssertionError(f"record_bytes {hello.record_bytes} outside the input")
    if hello.sni is not None and not (hello.sni and hello.sni.isascii()):
        raise AssertionError(f"SNI {hello.sni!r} is empty or not ASCII")
    try:
        again = parse_client_hello(data + b"\x17\x03\x03junk", max_size)
    except ClientHelloError as exc:
        raise AssertionError("trailing bytes turned a parsed hello into an error") from exc
    if again != hello:
        raise AssertionError(f"trailing bytes changed the hello: {hello} != {again}")
    return hello


def one_input(data: bytes) -> None:
    check(data)
    if data:
        check(data, max_size=64 + data[0] * 4)
    body = b"\x01" + len(data).to_bytes(3, "big") + data
    if len(body) <= 1 << 14:
        check(struct.pack("!BHH", 0x16, 0x0303, len(body)) + body)
    # Record size from the first byte: tiny records cost a loop turn each, and a
    # run spent mostly on one-byte records would try few inputs.
    check(reframe(body, 1 + (data[0] if data else 0)))


def main() -> None:
    hellos = [real_hello("us.icr.io"), real_hello(None), real_hello("dd0.icr.io", ["h2"])]
    seeds = {f"seed-{i}": hello for i, hello in enumerate(hellos)}
    # The bare handshake bodies: `one_input` wraps them in records itself.
    seeds.update({f"body-{i}": hello[9:] for i, hello in enumerate(hellos)})
    fuzz_main(seeds, one_input)


if __name__ == "__main__":
    main()
