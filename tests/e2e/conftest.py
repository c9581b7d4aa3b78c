"""Fixtures for end-to-end tests against the real testbed (see tests/testbed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.testbed import Testbed, start_testbed
from tests.testbed.squid import ReferenceProxy, start_reference_proxy


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
