"""Coverage-guided fuzzing (atheris/libFuzzer) of the PROXY protocol parser
(wire/proxy_protocol.py); run by `make fuzz`, never by pytest.

Each input is parsed as sent and behind each signature (v1's `PROXY `, v2's
twelve bytes) to reach the parsers past the first check. Only None, a
ProxyHeader or ProxyHeaderError may come out; an accepted header must read the
same to an independent struct-based reading, and must not change when bytes
follow it (the client's first bytes ride behind the header).

    python tests/fuzz/atheris_proxy_protocol.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main

with atheris.instrument_imports():
    from tests.support.proxy_headers import SEEDS, independent

    from portcullis.basics.errors import ProxyHeaderError
    from portcullis.wire.proxy_protocol import V2_SIGNATURE, ProxyHeader, parse_proxy_header


def check(data: bytes) -> None:
    try:
        header = parse_proxy_header(data)
    except ProxyHeaderError as exc:
        if not exc.message or exc.status != 400:
            raise AssertionError(f"ProxyHeaderError {exc.status} {exc.message!r}") from exc
        return
    if header is None:
        return
    if not isinstance(header, ProxyHeader):
        raise AssertionError(f"parse_proxy_header gave {header!r}")
    independent(data, header)
    if parse_proxy_header(data + b"\x16\x03\x01CONNECT") != header:
        raise AssertionError("bytes after the header changed what it says")


def one_input(data: bytes) -> None:
    check(data)
    check(b"PROXY " + data)
    check(V2_SIGNATURE + data)


def main() -> None:
    fuzz_main({f"seed-{i}": seed for i, seed in enumerate(SEEDS)}, one_input)


if __name__ == "__main__":
    main()
