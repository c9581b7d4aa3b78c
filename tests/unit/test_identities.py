"""Identity groups and quotas in the policy: validation, the engine's groups, and
admission's 407 / quota refusals (no sockets: static resolver hosts)."""

from __future__ import annotations

import asyncio
import ipaddress
import textwrap
from pathlib import Path

import pytest
import trustme

from portcullis.basics.errors import (
    AuthError,
    ListenError,
    PasswordFileError,
    PolicyError,
    QuotaExceeded,
    Refusal,
)
from portcullis.basics.vocabulary import Decision, Mode, Reason
from portcullis.config import parse_policy
from portcullis.policy.engine import Engine
from portcullis.proxy.admission import prepare, refused, stranger
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.gate import Gate
from portcullis.proxy.identify import identify
from portcullis.proxy.responses import error_response
from portcullis.proxy.tls_listener import certificate_identity, server_context
from portcullis.tools.passwd import set_password
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import parse_request_head

POLICY = """
version: 1
sources:
  workers: [10.240.0.0/24]
  build-hosts: [10.250.0.0/24]
auth:
  passwords: {passwd}
identities:
  ci-runners:
    names: [runner-1, spiffe://ci/runner]
  pinned:
    names: [deployer]
    from: [build-hosts, 192.0.2.0/24]
rules:
  - name: registry
    from: [workers, ci-runners]
    to: [us.icr.io]
  - name: deploy
    from: [pinned]
    to: [deploy.icr.io]
quotas:
  ci-runners: {{max_tunnels: 1}}
  workers: {{rate: 1, burst: 1}}
resolver:
  allow_ranges: [198.51.100.0/24]
  hosts: {{us.icr.io: [198.51.100.7], deploy.icr.io: [198.51.100.8]}}
"""


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    set_password(path, "runner-1", "pw", scheme="bcrypt", cost=4)
    set_password(path, "deployer", "dpw", scheme="bcrypt", cost=4)
    return path


@pytest.fixture
def gate(passwd: Path) -> Gate:
    return Gate(parse_policy(POLICY.format(passwd=passwd)))


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_identity_groups_join_the_address_groups(gate: Gate) -> None:
    engine = gate.engine
    assert engine.groups_of(ip("203.0.113.1"), "runner-1") == {"ci-runners"}
    assert engine.groups_of(ip("10.240.0.5"), "runner-1") == {"workers", "ci-runners"}
    assert engine.groups_of(ip("203.0.113.1"), "someone") == frozenset()
    # `from` needs the address too: a build host or the inline CIDR, not elsewhere.
    assert engine.groups_of(ip("10.250.0.9"), "deployer") == {"build-hosts", "pinned"}
    assert "pinned" in engine.groups_of(ip("192.0.2.7"), "deployer")
    assert engine.groups_of(ip("203.0.113.1"), "deployer") == frozenset()
    assert engine.decide(ip("203.0.113.1"), "us.icr.io", 443, identity="runner-1").allowed
    assert not engine.decide(ip("203.0.113.1"), "deploy.icr.io", 443,
                             identity="deployer").allowed
    assert engine.decide(ip("10.250.0.9"), "deploy.icr.io", 443, identity="deployer").allowed


def test_missing_credentials_are_asked_for_only_where_an_identity_would_help(
    gate: Gate
) -> None:
    engine = gate.engine
    assert engine.could_identify(ip("203.0.113.1"), "us.icr.io", 443)
    assert not engine.could_identify(ip("203.0.113.1"), "deploy.icr.io", 443)  # from
    assert engine.could_identify(ip("10.250.0.9"), "deploy.icr.io", 443)
    assert not engine.could_identify(ip("203.0.113.1"), "evil.example", 443)
    # Any address may log in to ci-runners: nobody is a stranger at accept.
    assert not stranger(gate, ip("203.0.113.1"))


def admit(gate: Gate, client: str, host: str, login: str | None = None,
          certified: str | None = None) -> Attempt:
    attempt = Attempt(Mode.EXPLICIT, client, 5000, "t", certified=certified)
    extra = f"Proxy-Authorization: {login}\r\n" if login else ""
    head = parse_request_head(f"CONNECT {host}:443 HTTP/1.1\r\n{extra}\r\n".encode())
    assert head is not None

    async def run() -> None:
        await identify(gate.authenticator, attempt, head, Authority(host, 443, False))
        await prepare(gate, attempt, Authority(host, 443, False), charge=True)

    asyncio.run(run())
    return attempt


BASIC = "Basic cnVubmVyLTE6cHc="  # runner-1:pw


def test_admission_answers_407_then_lets_a_login_in_and_counts_its_quota(gate: Gate) -> None:
    with pytest.raises(Refusal) as caught:
        admit(gate, "203.0.113.1", "us.icr.io")
    assert caught.value.status == 407 and caught.value.reason is Reason.AUTH_REQUIRED
    with pytest.raises(AuthError) as wrong:
        admit(gate, "203.0.113.1", "us.icr.io", "Basic cnVubmVyLTE6bm8=")  # runner-1:no
    assert wrong.value.identity == "runner-1" and wrong.value.status == 407
    attempt = admit(gate, "203.0.113.1", "us.icr.io", BASIC)
    assert (attempt.decision, attempt.identity) == (Decision.ALLOW, "runner-1")
    # ci-runners allows one tunnel at a time: the next login waits for a release.
    with pytest.raises(QuotaExceeded) as over:
        admit(gate, "203.0.113.2", "us.icr.io", BASIC)
    assert (over.value.status, over.value.reason) == (503, Reason.OVER_CAPACITY)
    attempt.release()
    admit(gate, "203.0.113.2", "us.icr.io", BASIC).release()
    assert gate.authenticator.cache.hit(
        "runner-1", gate.authenticator.passwords.entries["runner-1"], "pw")  # type: ignore[union-attr]


def test_a_certificate_identity_needs_no_password(gate: Gate) -> None:
    attempt = admit(gate, "203.0.113.1", "us.icr.io", certified="spiffe://ci/runner")
    assert attempt.identity == "spiffe://ci/runner" and attempt.allowed


def test_the_407_answer_names_the_scheme_and_the_429_says_when_to_retry() -> None:
    attempt = Attempt(Mode.EXPLICIT, "10.0.0.1", 1, "t", host="us.icr.io", port=443,
                      reason=Reason.AUTH_REQUIRED)
    assert refused(attempt).status == 407
    head = error_response(407, attempt, realm="ci").decode()
    assert head.startswith("HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert 'Proxy-Authenticate: Basic realm="ci"\r\n' in head
    assert "Retry-After: 1\r\n" in error_response(429, attempt).decode()
    assert "Proxy-Authenticate" not in error_response(403, attempt).decode()


@pytest.mark.parametrize(("extra", "problem"), [
    ("identities: {workers: {names: [a]}}\nauth: {passwords: /x}",
     "'workers' is also a source group"),
    ("identities: {ci: {names: [a]}}", "identities need a way to prove them"),
    ("identities: {ci: {names: [a], from: [nowhere]}}\nauth: {passwords: /x}",
     "identities.ci.from: unknown source group 'nowhere'"),
    ("identities: {ci: {names: ['a b']}}\nauth: {passwords: /x}", "is not an identity"),
    ("quotas: {nobody: {rate: 1}}", "quotas: 'nobody' is no source group"),
    ("quotas: {workers: {per: member}}", "a quota needs max_tunnels, rate, or both"),
    ("quotas: {workers: {max_tunnels: 1, burst: 3}}", "burst is the size of the rate's"),
    ("auth: {tls: {certificate: a, key: b}}", "listen.explicit_tls and auth.tls go together"),
    ("auth: {realm: 'a\"b'}", "realm"),
])
def test_bad_identity_and_quota_sections_are_refused_with_what_to_write(
    extra: str, problem: str
) -> None:
    text = textwrap.dedent("""\
        version: 1
        sources: {workers: [10.0.0.0/8]}
        rules: [{name: r, from: [workers], to: [us.icr.io]}]
        """) + extra + "\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert problem in str(caught.value)


def test_a_bad_password_file_stops_the_start_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("alice\n")
    policy = parse_policy(POLICY.format(passwd=path))
    with pytest.raises(PasswordFileError, match=f"{path}:1: expected user:hash"):
        Gate(policy, Engine(policy))


def test_the_certificate_identity_is_the_first_san_else_the_cn(tmp_path: Path) -> None:
    assert certificate_identity(None) is None and certificate_identity({}) is None
    assert certificate_identity({"subject": ((("commonName", "runner-7"),),)}) == "runner-7"
    cert = {"subject": ((("commonName", "cn"),),),
            "subjectAltName": (("IP Address", "10.0.0.1"), ("URI", "spiffe://ci/r"),
                               ("DNS", "r.ci"))}
    assert certificate_identity(cert) == "spiffe://ci/r"
    ca = trustme.CA()
    leaf = ca.issue_cert("proxy.example")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "leaf.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    policy = parse_policy(textwrap.dedent(f"""\
        version: 1
        listen: {{explicit_tls: 127.0.0.1:0}}
        auth: {{tls: {{certificate: {tmp_path}/leaf.pem, key: {tmp_path}/leaf.pem,
                      client_ca: {tmp_path}/ca.pem}}}}
        """))
    assert policy.auth.tls is not None
    assert server_context(policy.auth.tls).verify_mode.name == "CERT_OPTIONAL"
    missing = policy.auth.tls.model_copy(update={"key": str(tmp_path / "none.pem")})
    with pytest.raises(ListenError, match=r"cannot use auth\.tls\.certificate"):
        server_context(missing)


def test_explain_asks_for_a_login_and_shows_what_an_identity_gets(tmp_path: Path) -> None:
    import subprocess
    import sys

    policy = tmp_path / "policy.yaml"
    # The password file need not exist for explain: nothing logs in there.
    policy.write_text(POLICY.format(passwd=tmp_path / "absent"))

    def explain(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "portcullis.cli", "explain", "-c", str(policy), "--from",
             "203.0.113.1", "--to", "us.icr.io", "--no-resolve", *extra],
            capture_output=True, text=True, check=False)

    done = explain()
    assert done.returncode == 1 and "DENY (reason: auth_required)" in done.stdout
    done = explain("--identity", "runner-1")
    assert done.returncode == 0, done.stderr
    assert "(groups: ci-runners)" in done.stdout and "ALLOW by rule 'registry'" in done.stdout


def test_a_redirected_client_is_never_asked_to_log_in(gate: Gate) -> None:
    attempt = Attempt(Mode.TRANSPARENT, "203.0.113.1", 5000, "t")

    async def run() -> None:
        await prepare(gate, attempt, Authority("us.icr.io", 443, False), charge=True)

    with pytest.raises(Refusal) as caught:
        asyncio.run(run())
    assert (caught.value.status, attempt.reason) == (403, Reason.SOURCE_UNKNOWN)


def test_logins_at_once_wait_for_one_hash_and_a_wrong_one_fails_them_all(
    tmp_path: Path
) -> None:
    from portcullis.config.access import Auth
    from portcullis.proxy.identify import Authenticator

    path = tmp_path / "passwd"
    set_password(path, "runner-1", "pw", scheme="bcrypt", cost=8)
    authenticator = Authenticator(Auth(passwords=str(path)))

    async def at_once(password: str) -> list[object]:
        return await asyncio.gather(*(authenticator.verify("runner-1", password)
                                      for _ in range(5)), return_exceptions=True)

    results = asyncio.run(at_once("pw"))
    assert sorted(map(str, results)) == ["cached"] * 4 + ["hashed"]
    assert asyncio.run(at_once("pw")) == ["cached"] * 5
    wrong = asyncio.run(at_once("nope"))
    assert all(isinstance(r, AuthError) and r.identity == "runner-1" for r in wrong)
    assert authenticator._running == {}


def test_an_unknown_user_costs_a_hash_like_a_known_one(tmp_path: Path) -> None:
    from portcullis.config.access import Auth
    from portcullis.proxy.identify import Authenticator

    path = tmp_path / "passwd"
    set_password(path, "runner-1", "pw", scheme="bcrypt", cost=4)
    authenticator = Authenticator(Auth(passwords=str(path)))
    with pytest.raises(AuthError, match="no user nobody") as caught:
        # runner-1's password, sent as another user: still refused.
        asyncio.run(authenticator.verify("nobody", "pw"))
    assert caught.value.identity == "nobody"
    assert authenticator._executor is not None  # a hash ran: the timing tells nothing
    assert authenticator.passwords is not None
    stored = authenticator.passwords.entries["runner-1"]
    assert not authenticator.cache.hit("nobody", stored, "pw")
