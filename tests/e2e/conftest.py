"""Fixtures for end-to-end tests against the real testbed (see tests/support/testbed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.testbed import Testbed, start_testbed
from tests.support.testbed.squid import ReferenceProxy, start_reference_proxy

# Off-loopback addresses that e2e tests name as places Portcullis must never dial
# (metadata, RFC 1918, CGNAT, NAT64...). A blackhole route for each makes that
# structural: if a regression ever dialled one, the packet dies in this kernel
# instead of leaving the machine. Adding routes needs root, for every e2e test:
# hence `pytest.mark.privileged` on each e2e module (tests/unit/test_test_layout.py).
NEVER_DIALLED = (
    "169.254.169.254/32", "10.0.0.1/32", "100.64.0.1/32", "192.0.2.10/32",
    "64:ff9b::7f00:1/128", "fd00::1/128", "2002:7f00:1::1/128", "2001:0:7f00:1::1/128",
)


@pytest.fixture(scope="session", autouse=True)
def blackhole_forbidden_targets() -> Iterator[None]:
    added = []
    for prefix in NEVER_DIALLED:
        family = "-6" if ":" in prefix else "-4"
        done = subprocess.run(["ip", family, "route", "add", "blackhole", prefix],
                              capture_output=True, text=True)
        if done.returncode != 0 and "File exists" not in done.stderr:
            raise RuntimeError(f"cannot blackhole {prefix}: {done.stderr.strip()}")
        if done.returncode == 0:
            added.append((family, prefix))
    yield
    for family, prefix in added:
        subprocess.run(["ip", family, "route", "del", "blackhole", prefix], capture_output=True)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """docker-registry as us.icr.io on 127.0.0.2:443 redirecting blobs to nginx as
    dd0.icr.io on 127.0.0.3:443, with `ns/app:1` (~21 MiB) and `ns/small:1` seeded.

    Started once per session and stopped at its end, whatever the tests did. A
    missing binary or a busy address fails the first test that uses it, loudly.
    """
    with start_testbed(tmp_path_factory.mktemp("testbed")) as bed:
        yield bed


@pytest.fixture(scope="session")
def reference_proxy(testbed: Testbed) -> Iterator[ReferenceProxy]:
    """Squid on 127.0.0.1:<free port>, resolving the testbed names from `testbed.hosts`:
    a known-good proxy to check the client side against before Portcullis."""
    with start_reference_proxy(testbed.hosts) as proxy:
        yield proxy
