"""Coverage-guided fuzzing (atheris/libFuzzer) of the plain-HTTP keep-alive loop:
sequences of request heads and bodies as `proxy/plain.py` reads them (see
tests/support/keepalive_driver.py); run by `make fuzz`, never by pytest.

    python tests/fuzz/atheris_keepalive.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main

with atheris.instrument_imports():
    from tests.support.keepalive_driver import drive

_GET = b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n"
SEEDS = [
    _GET + _GET,
    _GET + b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
    b"POST http://a.example:8080/u HTTP/1.1\r\nHost: A.EXAMPLE.:8080\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHost: evil\r\nX-Sum: 1\r\n\r\n" + _GET,
    b"PUT http://a.example/v2/x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\nbody"
    + _GET,
    b"GET http://[2001:db8::1]/ HTTP/1.0\r\n\r\n" + _GET,
    _GET + b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\nX: a\r\n b\r\n\r\n",
]


def one_input(data: bytes) -> None:
    limit = 1024 + (data[0] if data else 0) * 64
    drive(data, limit)


def main() -> None:
    fuzz_main({f"seed-{i}": seed for i, seed in enumerate(SEEDS)}, one_input)


if __name__ == "__main__":
    main()
