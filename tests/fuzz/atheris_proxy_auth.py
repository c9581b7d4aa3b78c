"""Coverage-guided fuzzing (atheris/libFuzzer) of the credentials parsers: the
client's `Proxy-Authorization` (wire/proxy_auth.py) and the parent proxy's
credentials file (config/credentials.py `read_credentials`); run by `make fuzz`,
never by pytest.

The input is split on NUL into the request's field values, parsed as sent and
behind `Basic ` with its base64 (to reach the decoding past the scheme check).
Only credentials, None or an AuthError (407, a message) may come out, and no
message may carry the password. The same bytes as a credentials file give a
`Basic` value that decodes back to the file's line, or a ValueError naming the
file and not its content.

    python tests/fuzz/atheris_proxy_auth.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main

with atheris.instrument_imports():
    from portcullis.basics.errors import AuthError
    from portcullis.config.credentials import read_credentials
    from portcullis.wire.proxy_auth import BasicCredentials, parse_proxy_authorization

SEEDS = [
    b"Basic " + base64.b64encode(b"ci-runner:s3cret"),
    b"basic   " + base64.b64encode(b"alice:pass:with:colons") + b"  ",
    b"Basic " + base64.b64encode("bob:p\u00e4ss".encode()),
    b"Bearer abc.def",
    b"Basic Zm9v",
    b"Basic " + base64.b64encode(b"a:b") + b"\x00Basic " + base64.b64encode(b"c:d"),
    b"user:password\n",
]
# One file rewritten for every input: a fresh file each time would measure the
# file system, not the parser.
_FILE = Path(tempfile.mkstemp(prefix="portcullis-fuzz-credentials-")[1])


def check_header(values: tuple[str, ...]) -> None:
    try:
        credentials = parse_proxy_authorization(values)
    except AuthError as exc:
        if exc.status != 407 or not exc.message:
            raise AssertionError(f"AuthError {exc.status} {exc.message!r}") from exc
        return
    if credentials is None:
        if values:
            raise AssertionError(f"no credentials from {values!r}")
        return
    if not isinstance(credentials, BasicCredentials) or not credentials.user:
        raise AssertionError(f"credentials {credentials!r}")
    if repr(credentials) != f"BasicCredentials(user={credentials.user!r})":
        raise AssertionError(f"the credentials' repr shows more than the user: {credentials!r}")
    if not all("!" <= c <= "~" for c in credentials.user):
        raise AssertionError(f"user {credentials.user!r} has characters outside printable ASCII")


def check_file(data: bytes) -> None:
    _FILE.write_bytes(data)
    try:
        value = read_credentials(str(_FILE))
    except ValueError as exc:
        if str(_FILE) not in str(exc):
            raise AssertionError(f"the error does not name the file: {exc}") from exc
        return
    scheme, _, token = value.partition(" ")
    line = base64.b64decode(token, validate=True).decode("utf-8")
    if scheme != "Basic" or ":" not in line or line.startswith(":") or line != line.strip():
        raise AssertionError(f"credentials file gave {value!r}")
    if line not in data.decode("utf-8"):
        raise AssertionError("the Basic value is not the file's line")


def one_input(data: bytes) -> None:
    text = data.decode("latin-1")
    values = tuple(text.split("\x00")) if text else ()
    check_header(values)
    check_header(("Basic " + base64.b64encode(data).decode("ascii"),))
    check_file(data)


def main() -> None:
    try:
        fuzz_main({f"seed-{i}": seed for i, seed in enumerate(SEEDS)}, one_input)
    finally:
        os.unlink(_FILE)


if __name__ == "__main__":
    main()
