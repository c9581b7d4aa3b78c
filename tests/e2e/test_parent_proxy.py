"""A parent proxy (`upstream_proxy`): Portcullis decides, then chains to Squid,
which resolves and dials. skopeo pulls through Portcullis -> Squid -> the
registry testbed; a name Portcullis denies never reaches Squid; Squid's own
refusals (403, 407 without credentials) are `parent_refused` with Squid's
status; a parent that is down is `502 parent_failed`; plain HTTP is tunnelled
through the parent too; Portcullis resolves nothing (its DNS server hears no
query) and never logs the credentials."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.http import body_of, connect, read_to_close, responses
from tests.support.parent import https_port as https_port_line
from tests.support.parent import parent_pki, squid_logged
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.servers import EchoServer
from tests.support.testbed import Testbed, verify_pulled
from tests.support.testbed.squid import ReferenceProxy, start_reference_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

ECHO_IP = "127.0.0.24"
HTTPS_PARENT_IP = "127.0.0.1"
PASSWORD = "pa55-parent-s3cret"


@pytest.fixture(scope="module")
def secrets() -> Iterator[Path]:
    """htpasswd for Squid (which runs as `proxy`, so outside pytest's 0700 tree)
    and the `user:password` file Portcullis reads."""
    directory = Path(tempfile.mkdtemp(prefix="portcullis-parent-"))
    os.chmod(directory, 0o755)
    hashed = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], capture_output=True,
                            text=True, check=True).stdout.strip()
    (directory / "htpasswd").write_text(f"portcullis:{hashed}\n")
    (directory / "htpasswd").chmod(0o644)
    (directory / "credentials").write_text(f"portcullis:{PASSWORD}\n")
    parent_pki(directory, HTTPS_PARENT_IP)
    yield directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer(ECHO_IP) as server:
        yield server


@pytest.fixture(scope="module")
def https_port() -> int:
    return closed_port()


@pytest.fixture(scope="module")
def squid(testbed: Testbed, secrets: Path, echo: EchoServer, https_port: int
          ) -> Iterator[ReferenceProxy]:
    """The corporate parent: wants Basic credentials, refuses de.icr.io itself,
    and listens for TLS too (https_port)."""
    access = f"""\
{https_port_line(secrets, (HTTPS_PARENT_IP, https_port))}
auth_param basic program /usr/lib/squid/basic_ncsa_auth {secrets / "htpasswd"}
auth_param basic realm corporate-parent
acl clients src 127.0.0.0/8
acl ports port 443 {echo.port}
acl CONNECT method CONNECT
acl authed proxy_auth REQUIRED
acl refused dstdomain de.icr.io
http_access deny CONNECT !ports
http_access deny refused
http_access allow clients authed
http_access deny all
"""
    hosts = {**testbed.hosts, "de.icr.io": [testbed.registry_addr[0]], "echo.test": [ECHO_IP]}
    with start_reference_proxy(hosts, access=access, timeout=15) as proxy:
        yield proxy


def chained_policy(parent: dict[str, Any] | str, dns: DnsServer, ports: list[int]
                   ) -> dict[str, Any]:
    # No static hosts: a lookup by Portcullis would reach the DNS server, which knows nothing.
    policy = policy_for({}, ["*.icr.io", "echo.test"], extra={"upstream_proxy": parent})
    policy["rules"][0]["ports"] = ports
    policy["resolver"]["servers"] = [dns.server]
    return policy


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer().start() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, squid: ReferenceProxy, secrets: Path,
          dns: DnsServer, echo: EchoServer) -> Iterator[RunningPortcullis]:
    parent = {"url": squid.url, "credentials": str(secrets / "credentials")}
    with run_portcullis(tmp_path_factory.mktemp("chained"),
                        chained_policy(parent, dns, [443, echo.port])) as running:
        yield running


def test_a_pull_goes_through_the_parent_and_portcullis_resolves_nothing(
    testbed: Testbed, proxy: RunningPortcullis, squid: ReferenceProxy, dns: DnsServer,
    tmp_path: Path,
) -> None:
    before = len(squid.access_log.read_text())
    result = testbed.pull(tmp_path / "out", proxy=proxy.url)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", testbed.image)
    squid_logged(squid, "CONNECT us.icr.io:443", "CONNECT dd0.icr.io:443", after=before)
    for host in ("us.icr.io", "dd0.icr.io"):
        record = proxy.decisions(host)[-1]
        assert record["decision"] == "allow" and record["reason"] == "rule_allow"
        assert record["parent"] == squid.url and record["parent_status"] == 200
        assert record["resolved"] == [] and record["dns_ms"] is None
        assert record["dialed"] == f"{squid.address[0]}:{squid.address[1]}"
    assert dns.queries == 0, dns.query_log
    # The credentials went to Squid (it let the pull through) and nowhere else.
    for path in proxy.log_path.parent.iterdir():
        if path.is_file() and path.name != "policy.yaml":
            assert PASSWORD not in path.read_text(), path


def test_a_denied_name_never_reaches_the_parent(proxy: RunningPortcullis,
                                                squid: ReferenceProxy) -> None:
    answer = proxy.ask("quay.io:443", to_close=True)
    assert answer.status == 403 and answer.header("X-Portcullis-Reason") == "no_rule"
    assert "quay.io" not in squid.access_log.read_text()
    record = proxy.decisions("quay.io")[-1]
    assert "parent" not in record and record["dialed"] is None


def test_the_parents_refusal_is_parent_refused_with_its_status(proxy: RunningPortcullis
                                                                ) -> None:
    answer = proxy.ask("de.icr.io:443", to_close=True)
    assert answer.status == 502, answer.data
    assert answer.header("X-Portcullis-Reason") == "parent_refused"
    assert b"refused CONNECT de.icr.io:443: 403" in answer.rest
    record = proxy.wait_for_log(lambda r: r.get("host") == "de.icr.io")
    assert (record["decision"], record["reason"]) == ("deny", "parent_refused")
    assert record["parent_status"] == 403 and record["rule"] == "registry"


def test_without_credentials_the_parent_answers_407(
    tmp_path: Path, squid: ReferenceProxy, dns: DnsServer
) -> None:
    with run_portcullis(tmp_path, chained_policy(squid.url, dns, [443])) as running:
        answer = running.ask("us.icr.io:443", to_close=True)
        assert answer.status == 502 and answer.header("X-Portcullis-Reason") == "parent_refused"
        assert b": 407 " in answer.rest
        record = running.wait_for_log(lambda r: r.get("host") == "us.icr.io")
        assert (record["reason"], record["parent_status"]) == ("parent_refused", 407)


def test_a_parent_that_is_down_gives_502_parent_failed(tmp_path: Path, dns: DnsServer) -> None:
    port = closed_port()
    with run_portcullis(tmp_path, chained_policy(f"http://127.0.0.1:{port}", dns, [443])
                        ) as running:
        answer = running.ask("us.icr.io:443", to_close=True)
        assert answer.status == 502 and answer.header("X-Portcullis-Reason") == "parent_failed"
        assert f"parent proxy http://127.0.0.1:{port}: unreachable".encode() in answer.rest
        assert b"Connection refused" in answer.rest
        record = running.wait_for_log(lambda r: r.get("host") == "us.icr.io")
        assert (record["decision"], record["reason"]) == ("deny", "parent_failed")
        assert record["parent"] == f"http://127.0.0.1:{port}" and record["parent_status"] is None
    assert dns.queries == 0


def test_an_https_parent_carries_the_pull_over_tls(
    testbed: Testbed, tmp_path: Path, squid: ReferenceProxy, secrets: Path, dns: DnsServer,
    https_port: int,
) -> None:
    url = f"https://{HTTPS_PARENT_IP}:{https_port}"
    parent = {"url": url, "credentials": str(secrets / "credentials"),
              "ca": str(secrets / "ca.pem")}
    with run_portcullis(tmp_path / "p", chained_policy(parent, dns, [443])) as running:
        before = len(squid.access_log.read_text())
        result = testbed.pull(tmp_path / "out", proxy=running.url)
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.image)
        squid_logged(squid, "CONNECT us.icr.io:443", "CONNECT dd0.icr.io:443", after=before)
        record = running.decisions("dd0.icr.io")[-1]
        assert (record["parent"], record["parent_status"]) == (url, 200)
        # A parent whose certificate the CA file does not vouch for is not talked to.
        running.use_policy(chained_policy({"url": url}, dns, [443]))
        answer = running.ask("us.icr.io:443", to_close=True)
        assert answer.status == 502 and answer.header("X-Portcullis-Reason") == "parent_failed"
        assert b"CERTIFICATE_VERIFY_FAILED" in answer.rest, answer.rest


def test_plain_http_is_tunnelled_through_the_parent(
    proxy: RunningPortcullis, squid: ReferenceProxy, echo: EchoServer
) -> None:
    before = len(proxy.decisions("echo.test"))
    request = (f"GET http://echo.test:{echo.port}/through-parent HTTP/1.1\r\n"
               f"Host: echo.test:{echo.port}\r\n\r\n").encode()
    # Two requests on one connection: the second reuses the tunnel through the parent.
    answers = responses(proxy.explicit, request + request.replace(b"-parent", b"-again"),
                        answers=2)
    assert [body_of(a)["target"] for a in answers] == ["/through-parent", "/through-again"]
    squid_logged(squid, f"CONNECT echo.test:{echo.port}")
    records = proxy.decisions("echo.test")[before:]
    assert [(r["mode"], r["parent"]) for r in records] == [("http", squid.url)] * 2
    assert records[0]["parent_status"] == 200


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed: refused when dialled)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_changed_credentials_file_takes_effect_without_a_reload(
    tmp_path: Path, squid: ReferenceProxy, dns: DnsServer
) -> None:
    """The credentials file is looked at once a second at most: a rotated
    password reaches the parent with no SIGHUP and no policy change, and a file
    broken mid-rotation keeps the last good credentials (the 407 then says why)."""
    credentials = tmp_path / "parent.cred"
    credentials.write_text("portcullis:not-the-password\n")
    parent = {"url": squid.url, "credentials": str(credentials)}

    def status_after(text: str) -> tuple[int, bytes]:
        credentials.write_text(text)
        time.sleep(1.2)  # past the once-a-second look
        sock, answer = connect(running.explicit, "us.icr.io:443")
        with sock:
            # A refusal's body ends at the close; an open tunnel would wait for
            # our ClientHello until the proxy's deadline, so it is not read on.
            if answer.status == 200:
                return answer.status, answer.rest
            return answer.status, answer.rest + read_to_close(sock)

    with run_portcullis(tmp_path / "p", chained_policy(parent, dns, [443])) as running:
        first = running.ask("us.icr.io:443", to_close=True)
        assert first.status == 502 and b": 407 " in first.rest
        assert status_after(f"portcullis:{PASSWORD}\n")[0] == 200
        assert status_after("no colon, no user\n")[0] == 200  # the last good credentials
        status, body = status_after("portcullis:rotated-away\n")
        assert status == 502 and b": 407 " in body and b"last good" not in body
        status, body = status_after("  \n")
        assert status == 502 and b": 407 " in body  # still the last good (wrong) value
        assert f"the credentials file {credentials} must hold one line".encode() in body
        records = running.records()
        assert not [r for r in records if r.get("msg") == "policy reloaded"]
        assert [r["parent_status"] for r in running.decisions("us.icr.io")] == \
            [407, 200, 200, 407, 407]
        for path in running.log_path.parent.iterdir():
            if path.is_file() and path.name != "policy.yaml":
                assert PASSWORD not in path.read_text() and "rotated-away" not in \
                    path.read_text(), path
