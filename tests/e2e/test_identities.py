"""Identities end to end (issue 15, part 3): skopeo and curl log in with
`Proxy-Authorization: Basic` against a file written by `portcullis passwd`, or
present a client certificate to the explicit listener served over TLS."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.http import Answer, body_of, dial, read_head, read_to_close, responses
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.servers import EchoServer
from tests.support.testbed import Testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

USER, SECRET = "runner-1", "correct-horse-battery"
WRONG = "wrong-pony-staple"
ECHO_IP = "127.0.0.4"
OUTSIDER = "127.0.0.9"  # an address in no source group: only an identity gets it through


def portcullis(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portcullis.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def set_password(path: Path, user: str, password: str, *extra: str) -> None:
    done = portcullis("passwd", str(path), user, "--password-stdin", *extra,
                      stdin=password + "\n")
    assert done.returncode == 0, done.stderr


def identity_policy(testbed: Testbed, passwd: Path, extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Only ci-runners (an identity group) may reach the registry; 127.0.0.1 is
    in no source group, so without a login it gets nothing."""
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"], sources=("127.0.0.2/32",),
                        extra={"auth": {"passwords": str(passwd)},
                               "identities": {"ci-runners": {"names": [USER]}},
                               **(extra or {})})
    policy["rules"][0]["from"] = ["ci-runners"]
    return policy


def curl(proxy: str, url: str, *args: str, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_connect}",
         "--max-time", "20", "--cacert", str(ca), "-x", proxy, *args, url],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin"})


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    set_password(path, USER, SECRET)  # argon2id
    set_password(path, "runner-2", "other-secret", "--scheme", "bcrypt", "--cost", "6")
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def test_skopeo_logs_in_and_every_connect_after_the_first_hits_the_cache(
    testbed: Testbed, tmp_path: Path, passwd: Path
) -> None:
    with run_portcullis(tmp_path / "p", identity_policy(testbed, passwd)) as proxy:
        host, port = proxy.explicit
        result = testbed.pull(tmp_path / "out", proxy=f"http://{USER}:{SECRET}@{host}:{port}")
        assert result.returncode == 0, result.stderr
        verify_pulled(tmp_path / "out", testbed.image)
        allowed = [r for r in proxy.decisions() if r["decision"] == "allow"]
        assert {r["host"] for r in allowed} == {"us.icr.io", "dd0.icr.io"}
        assert all(r["identity"] == USER for r in allowed)
        # One hash for the whole pull: the other CONNECTs were cache hits.
        metrics = scrape(proxy)
        assert 'portcullis_logins_total{result="hashed"} 1.0' in metrics
        cached = value(metrics, 'portcullis_logins_total{result="cached"}')
        assert cached == len(allowed) - 1 and cached >= 1

        # The same pull without a login: skopeo is told 407 and says so.
        result = testbed.pull(tmp_path / "out2", proxy=proxy.url)
        assert result.returncode != 0
        assert "Proxy Authentication Required" in result.stderr, result.stderr
        refusal = proxy.wait_for_log(lambda r: r.get("reason") == "auth_required")
        assert refusal["decision"] == "deny" and "identity" not in refusal


def test_curl_without_or_with_a_wrong_login_gets_407_and_the_secret_is_never_logged(
    testbed: Testbed, tmp_path: Path, passwd: Path
) -> None:
    with run_portcullis(tmp_path / "p", identity_policy(testbed, passwd)) as proxy:
        host, port = proxy.explicit
        url = "https://us.icr.io/v2/"
        done = curl(f"http://{host}:{port}", url, ca=testbed.ca_pem)
        assert done.stdout == "000 407", (done.stdout, done.stderr)
        done = curl(f"http://{host}:{port}", url, "--proxy-user", f"{USER}:{WRONG}",
                    ca=testbed.ca_pem)
        assert done.stdout == "000 407", (done.stdout, done.stderr)
        done = curl(f"http://{host}:{port}", url, "--proxy-user", f"nobody:{SECRET}",
                    ca=testbed.ca_pem)
        assert done.stdout == "000 407", (done.stdout, done.stderr)
        done = curl(f"http://{host}:{port}", url, "--proxy-user", f"{USER}:{SECRET}",
                    ca=testbed.ca_pem)
        assert done.stdout == "200 200", (done.stdout, done.stderr)

        # The answer names the scheme, so clients know to send credentials.
        with dial(proxy.explicit) as sock:
            sock.sendall(b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n")
            answer = Answer(*read_head(sock))
            assert answer.status == 407
            assert answer.header("Proxy-Authenticate") == 'Basic realm="portcullis"'
            assert answer.header("X-Portcullis-Reason") == "auth_required"

        failed = [r for r in proxy.decisions() if r["reason"] == "auth_failed"]
        assert [(r["identity"], r["decision"], r["host"]) for r in failed] == [
            (USER, "deny", "us.icr.io"), ("nobody", "deny", "us.icr.io")]
        assert 'portcullis_logins_total{result="failed"} 2.0' in scrape(proxy)
        log = proxy.log_path.read_text() + (tmp_path / "p" / "stderr.txt").read_text()
        for secret in (SECRET, WRONG):
            for form in (secret, base64.b64encode(f"{USER}:{secret}".encode()).decode()):
                assert form not in log


def test_a_changed_password_takes_effect_without_a_reload(
    testbed: Testbed, tmp_path: Path, passwd: Path
) -> None:
    with run_portcullis(tmp_path / "p", identity_policy(testbed, passwd)) as proxy:
        host, port = proxy.explicit
        url = "https://us.icr.io/v2/"
        login = ("--proxy-user", f"{USER}:{SECRET}")
        assert curl(f"http://{host}:{port}", url, *login, ca=testbed.ca_pem).stdout == "200 200"
        set_password(passwd, USER, "new-secret")
        deadline = time.monotonic() + 5
        # The cached login was for the old hash: it no longer counts.
        while curl(f"http://{host}:{port}", url, *login, ca=testbed.ca_pem).stdout != "000 407":
            assert time.monotonic() < deadline, "the old password still works"
            time.sleep(0.3)
        new = ("--proxy-user", f"{USER}:new-secret")
        assert curl(f"http://{host}:{port}", url, *new, ca=testbed.ca_pem).stdout == "200 200"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer(ECHO_IP) as server:
        yield server


def test_plain_http_login_is_checked_per_request_and_never_forwarded(
    tmp_path: Path, passwd: Path, echo: EchoServer
) -> None:
    hosts = {"web.test": [ECHO_IP]}
    policy = policy_for(hosts, [], sources=("127.0.0.2/32",), extra={
        "auth": {"passwords": str(passwd)}, "identities": {"ci-runners": {"names": [USER]}}})
    policy["rules"] = [{"name": "web", "from": ["ci-runners"], "to": ["web.test"],
                        "ports": [echo.port]}]
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()

    def get(login: str) -> bytes:
        return (f"GET http://web.test:{echo.port}/x HTTP/1.1\r\nHost: web.test:{echo.port}\r\n"
                f"{login}\r\n").encode()

    with run_portcullis(tmp_path / "p", policy) as proxy:
        first, second = responses(
            proxy.explicit, get(f"Proxy-Authorization: Basic {token}\r\n") + get(""),
            answers=2)
        assert first.startswith(b"HTTP/1.1 200 "), first
        seen = body_of(first)
        names = [name.lower() for name, _ in seen["headers"]]  # type: ignore[union-attr]
        assert "proxy-authorization" not in names and "host" in names
        # The second request on the same connection carried no login: refused on its own.
        assert second.startswith(b"HTTP/1.1 407 "), second
        records = proxy.decisions("web.test")
        assert [(r["decision"], r["reason"], r.get("identity")) for r in records] == [
            ("allow", "rule_allow", USER), ("deny", "auth_required", None)]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A server certificate for the proxy and a client CA with one client."""
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    out = {name: tmp_path / f"{name}.pem" for name in
           ("server_ca", "server", "client_ca", "client", "rogue")}
    server_ca.cert_pem.write_to_path(str(out["server_ca"]))
    server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(out["server"]))
    client_ca.cert_pem.write_to_path(str(out["client_ca"]))
    client_ca.issue_cert("build.ci.example").private_key_and_cert_chain_pem.write_to_path(
        str(out["client"]))
    rogue_ca.issue_cert("build.ci.example").private_key_and_cert_chain_pem.write_to_path(
        str(out["rogue"]))
    return out


def test_a_client_certificate_on_the_tls_listener_is_the_identity(
    testbed: Testbed, tmp_path: Path, passwd: Path, pki: dict[str, Path]
) -> None:
    policy = identity_policy(testbed, passwd, {
        "identities": {"ci-runners": {"names": [USER, "build.ci.example"]}},
    })
    policy["listen"]["explicit_tls"] = "127.0.0.1:0"
    policy["auth"]["tls"] = {"certificate": str(pki["server"]), "key": str(pki["server"]),
                             "client_ca": str(pki["client_ca"])}
    with run_portcullis(tmp_path / "p", policy) as proxy:
        listening = proxy.wait_for_log(lambda r: r.get("msg") == "listening")
        tls_proxy = f"https://{listening['explicit_tls']}"
        url = "https://us.icr.io/v2/"
        trust = ("--proxy-cacert", str(pki["server_ca"]))
        done = curl(tls_proxy, url, *trust, "--proxy-cert", str(pki["client"]),
                    ca=testbed.ca_pem)
        assert done.stdout == "200 200", (done.stdout, done.stderr)
        record = proxy.wait_for_log(lambda r: r.get("decision") == "allow")
        assert (record["mode"], record["identity"]) == ("explicit_tls", "build.ci.example")
        # No certificate: a password over TLS still works, and nothing at all is a 407.
        done = curl(tls_proxy, url, *trust, ca=testbed.ca_pem)
        assert done.stdout == "000 407", (done.stdout, done.stderr)
        done = curl(tls_proxy, url, *trust, "--proxy-user", f"{USER}:{SECRET}",
                    ca=testbed.ca_pem)
        assert done.stdout == "200 200", (done.stdout, done.stderr)
        # A certificate from another CA fails the handshake, and is logged as such.
        done = curl(tls_proxy, url, *trust, "--proxy-cert", str(pki["rogue"]),
                    ca=testbed.ca_pem)
        assert done.returncode != 0 and done.stdout.startswith("000")
        record = proxy.wait_for_log(lambda r: r.get("reason") == "auth_failed")
        assert (record["mode"], record["decision"]) == ("explicit_tls", "deny")


def test_an_identity_group_with_from_needs_both_the_login_and_the_address(
    testbed: Testbed, tmp_path: Path, passwd: Path
) -> None:
    policy = identity_policy(testbed, passwd, {
        "identities": {"ci-runners": {"names": [USER], "from": ["127.0.0.1/32"]}}})
    with run_portcullis(tmp_path / "p", policy) as proxy:
        token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        connect = (f"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n"
                   f"Proxy-Authorization: Basic {token}\r\n\r\n").encode()
        with dial(proxy.explicit, source="127.0.0.1") as sock:
            sock.sendall(connect)
            assert Answer(*read_head(sock)).status == 200
        # The right login from another address: no member, and a stranger at accept.
        with dial(proxy.explicit, source=OUTSIDER) as sock:
            sock.sendall(connect)
            answer = Answer(*read_head(sock))
            assert answer.status == 403 and answer.header("X-Portcullis-Reason") == \
                "source_unknown"
            read_to_close(sock)


def scrape(proxy: RunningPortcullis) -> str:
    with dial(proxy.admin) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_to_close(sock).decode()


def value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in the metrics")
