"""Coverage-guided fuzzing (atheris/libFuzzer) of the request-head parser and the
authority checks behind it; run by `make fuzz`, never by pytest.

Any exception other than the parsers' own errors, or a broken invariant, is a
crash: libFuzzer stops and writes the input next to the artifact prefix.

    python tests/fuzz/atheris_http1.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main

with atheris.instrument_imports():
    from portcullis.basics.errors import AuthorityError, HttpError
    from portcullis.wire.authority import parse_authority
    from portcullis.wire.http1 import (
        KNOWN_METHODS,
        check_request,
        parse_absolute_uri,
        parse_connect_target,
        parse_request_head,
    )

SEEDS = [
    b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\nUser-Agent: skopeo/1.14\r\n\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.0\r\n\r\n",
    b"CONNECT xn--80ak6aa92e.com:443 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
    b"GET http://dd0.icr.io/v2/ns/app/blobs/sha256:ab?x=1 HTTP/1.1\r\nHost: dd0.icr.io\r\n"
    b"Accept: */*\r\nAuthorization: Bearer abc.def\r\nX-Obs: caf\xe9\r\n\r\n",
    b"\r\nPUT http://a.example:5000/v2/x HTTP/1.1\r\nHost: a.example:5000\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET http://127.0.0.1:80/ HTTP/1.0\r\n\r\n",
]


def one_input(data: bytes) -> None:
    # The first byte picks a size limit, so the "too large" branches are reached
    # without megabyte inputs.
    limit = 1024 + (data[0] if data else 0) * 64
    try:
        head = parse_request_head(data, limit)
    except HttpError as exc:
        if exc.status not in (400, 431, 501) or not exc.message:
            raise AssertionError(f"unexpected HttpError {exc.status} {exc.message!r}") from exc
        head = None
    if head is not None:
        if not (0 < head.head_length <= min(len(data), limit)):
            raise AssertionError(f"head_length {head.head_length} outside the input")
        if not data[: head.head_length].endswith(b"\r\n\r\n"):
            raise AssertionError("a head that does not end with CRLFCRLF")
        if head.method not in KNOWN_METHODS:
            raise AssertionError(f"unknown method {head.method!r} accepted")
        for name, value in head.headers:
            if name != name.lower() or any(c in value for c in "\r\n\x00"):
                raise AssertionError(f"header {name!r} keeps forbidden characters")
        try:
            authority = check_request(head)
        except HttpError:
            pass
        else:
            if not (1 <= authority.port <= 65535 and authority.host):
                raise AssertionError(f"bad authority {authority}")
    # The authority parsers alone, on the same bytes as text.
    text = data.decode("latin-1")
    for parse in (parse_connect_target, parse_absolute_uri):
        with contextlib.suppress(HttpError):
            parse(text)
    with contextlib.suppress(AuthorityError):
        parse_authority(text, 80, "fuzz")


def main() -> None:
    fuzz_main({f"seed-{i}": seed for i, seed in enumerate(SEEDS)}, one_input)


if __name__ == "__main__":
    main()
