"""Suite-wide hooks: a test marked `privileged` fails at once, and says why,
when the run is not root (it never skips: `make test` runs everything as root)."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, nftables, routes or ports"
                    " below 1024); run it as root, or leave it out with -m 'not privileged'",
                    pytrace=False)
