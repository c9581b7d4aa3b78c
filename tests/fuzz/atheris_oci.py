"""Coverage-guided fuzzing (atheris/libFuzzer) of OCI request classification
(wire/oci.py) and the judging behind it (policy/inspection.py); run by
`make fuzz`, never by pytest.

The first byte picks a method, the rest is the target, as sent and under
`/v2/` (to reach the repository paths quickly). Only an OciRequest or a
BadRequest (400, a message) may come out, and a pull-only rule must allow
nothing outside the repositories it names (tests/support/oci_checks.py).

    python tests/fuzz/atheris_oci.py -max_total_time=60 CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# Run as a script: make the checkout importable for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.fuzzing import fuzz_main

with atheris.instrument_imports():
    from tests.support.oci_checks import check_judged

    from portcullis.basics.errors import BadRequest
    from portcullis.wire.oci import OciRequest, classify

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get")
SEEDS = [
    b"\x00/v2/",
    b"\x00/v2/platform/app/manifests/1.0",
    b"\x01/v2/base/ubi9/manifests/sha256:" + b"a" * 64,
    b"\x00/v2/platform/team/app/blobs/sha256:" + b"b" * 64,
    b"\x02/v2/platform/app/blobs/uploads/",
    b"\x06/v2/platform/app/blobs/uploads/0c4e-9a?digest=sha256:cd",
    b"\x00/v2/platform/app/tags/list?n=10",
    b"\x00/v2/_catalog",
    b"\x00/oauth/token?service=registry&scope=repository:platform/app:pull"
    b"&scope=repository:other/x:pull,push",
    b"\x02/oauth/token",
    b"\x00/v2/platform/../secret/manifests/1",
    b"\x00/v2/platform%2fapp/manifests/1",
]


def check(method: str, target: str) -> None:
    try:
        request = classify(method, target)
    except BadRequest as exc:
        if exc.status != 400 or not exc.message:
            raise AssertionError(f"BadRequest {exc.status} {exc.message!r}") from exc
        return
    if not isinstance(request, OciRequest) or request.method != method:
        raise AssertionError(f"classify gave {request!r}")
    check_judged(request)


def one_input(data: bytes) -> None:
    if not data:
        return
    method = METHODS[data[0] % len(METHODS)]
    target = data[1:].decode("latin-1")
    check(method, target)
    check(method, "/v2/" + target)


def main() -> None:
    fuzz_main({f"seed-{i}": seed for i, seed in enumerate(SEEDS)}, one_input)


if __name__ == "__main__":
    main()
