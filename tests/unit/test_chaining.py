"""`upstream_proxy` and `listen.proxy_protocol` in the policy file, which
parent a decision takes, what admission still checks when a parent resolves,
what `explain` and `check` say, and the parent dial against real loopback
servers that answer as a parent would (or would not)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from tests.support.servers import ThreadedServer

from portcullis.basics.errors import PolicyError, Refusal
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.config import parse_policy
from portcullis.observe.metrics import Metrics
from portcullis.proxy.admission import prepare
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.explaining import explain_target
from portcullis.proxy.gate import Gate
from portcullis.proxy.parent import connect_request, dial_parent, parent_for
from portcullis.tools.check_report import Status, Step
from portcullis.tools.diagnose import explain as diagnose
from portcullis.tools.netprobe import Kind
from portcullis.wire.authority import Authority

BASE = """
version: 1
{top}
sources:
  workers: [10.240.0.0/24]
rules:
  - name: registry
    from: [workers]
    to: ["*.icr.io", "10.20.0.0/16"]
  - name: mirror
    from: [workers]
    to: [mirror.example]
    upstream_proxy: {mirror}
  - name: no-quay
    from: [workers]
    to: [quay.io]
    action: deny
resolver:
  hosts: {{us.icr.io: [192.0.2.10], mirror.example: [198.51.100.7]}}
  allow_ranges: [192.0.2.0/24, 198.51.100.0/24]
transparent:
  strict: {strict}
"""
CLIENT = "10.240.0.7"


def policy(top: str = "upstream_proxy: http://10.1.2.3:3128", mirror: str = "direct",
           strict: str = "false", mode: str = "enforce") -> Gate:
    return Gate(parse_policy(BASE.format(top=top + f"\nmode: {mode}", mirror=mirror,
                                         strict=strict)))


def problems(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return str(caught.value)


# --- the policy file ------------------------------------------------------------------


def test_credentials_come_from_a_file_and_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "parent.cred"
    secret.write_text("alice:s3cr3t:with-colon\n")
    gate = policy(f"upstream_proxy: {{url: 'https://proxy.corp:8443', credentials: {secret}}}")
    parent = gate.policy.upstream_proxy
    assert parent is not None and parent.tls and (parent.host, parent.port) == ("proxy.corp", 8443)
    assert parent.authorization == "Basic YWxpY2U6czNjcjN0OndpdGgtY29sb24="
    assert "s3cr3t" not in f"{parent} {parent!r} {gate.policy!r}"
    request = connect_request(parent, Authority("us.icr.io", 443, False))
    assert request == (b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n"
                       b"Proxy-Authorization: Basic YWxpY2U6czNjcjN0OndpdGgtY29sb24=\r\n\r\n")
    plain = policy().policy.upstream_proxy
    assert plain is not None and b"Proxy-Authorization" not in connect_request(
        plain, Authority("2001:db8::1", 443, True))
    assert b"CONNECT [2001:db8::1]:443 " in connect_request(
        plain, Authority("2001:db8::1", 443, True))


@pytest.mark.parametrize(("value", "says"), [
    ("http://user:pw@proxy:3128", "credentials do not belong in the URL"),
    ("http://proxy", "write http://HOST:PORT"),
    ("socks5://proxy:1080", "write http://HOST:PORT or https://HOST:PORT"),
    ("http://proxy:3128/path", "nothing after it"),
    ("{url: 'http://proxy:3128', ca: /etc/hostname}", "`ca` applies to an https:// parent"),
    ("{url: 'http://proxy:3128', credentials: /nonexistent/cred}",
     "cannot read the credentials file /nonexistent/cred"),
])
def test_a_parent_that_cannot_be_used_is_a_located_load_error(value: str, says: str) -> None:
    text = problems(BASE.format(top=f"upstream_proxy: {value}", mirror="direct",
                                strict="false"))
    assert says in text and text.startswith("<policy>:3: upstream_proxy: ") and "pw" not in text


def test_a_credentials_file_must_hold_one_user_password_line(tmp_path: Path) -> None:
    bad = tmp_path / "cred"
    bad.write_text("just-a-token-s3cr3t\n")
    text = problems(BASE.format(top=f"upstream_proxy: {{url: 'http://p:1', credentials: {bad}}}",
                                mirror="direct", strict="false"))
    assert "must hold one line 'user:password'" in text and "s3cr3t" not in text


def test_resolves_to_cannot_be_kept_through_a_parent() -> None:
    text = BASE.format(top="upstream_proxy: http://10.1.2.3:3128", mirror="direct",
                       strict="false").replace(
        "    to: [mirror.example]\n",
        "    to: [mirror.example]\n    resolves_to: [198.51.100.0/24]\n")
    assert parse_policy(text)  # `direct`: Portcullis resolves and checks itself
    said = problems(text.replace("upstream_proxy: direct", "upstream_proxy: http://p:3128"))
    assert "`resolves_to` cannot be enforced through the parent proxy http://p:3128" in said


def test_proxy_protocol_needs_its_listener() -> None:
    text = "version: 1\nlisten:\n  proxy_protocol:\n    transparent: {from: [10.0.0.5/32]}\n"
    assert "proxy_protocol.transparent: there is no `transparent` listener" in problems(text)
    listen = parse_policy(text.replace("listen:\n", "listen:\n  transparent: 0.0.0.0:3129\n")
                          ).listen.proxy_protocol.transparent
    assert listen is not None and listen.required and str(listen.from_[0]) == "10.0.0.5/32"


# --- which parent, and what admission still does -----------------------------------------


def decided(gate: Gate, host: str, port: int = 443, *, original: str | None = None
            ) -> tuple[Attempt, list[str], Refusal | None]:
    import ipaddress

    attempt = Attempt(Mode.EXPLICIT, CLIENT, 1, "t")
    target = Authority(host, port, host[0].isdigit())
    refusal = None
    addresses: list[str] = []
    try:
        addresses = [str(a) for a in asyncio.run(prepare(
            gate, attempt, target,
            original=ipaddress.ip_address(original) if original else None))]
    except Refusal as exc:
        refusal = exc
    return attempt, addresses, refusal


def test_allowed_names_go_through_the_parent_unresolved() -> None:
    attempt, addresses, refusal = decided(policy(), "us.icr.io")
    assert refusal is None and addresses == [] and attempt.parent == "http://10.1.2.3:3128"
    assert attempt.checked is None and attempt.dns_ms is None and attempt.resolved == ()


def test_a_rule_may_say_direct_or_name_its_own_parent() -> None:
    attempt, addresses, _ = decided(policy(), "mirror.example")
    assert attempt.parent is None and addresses == ["198.51.100.7"]
    own = policy(mirror="http://mirror-proxy:8080")
    assert parent_for(own, own.engine.rules[1]) is not None
    assert str(parent_for(own, own.engine.rules[1])) == "http://mirror-proxy:8080"
    assert parent_for(own, None) is own.policy.upstream_proxy


def test_a_denied_name_is_refused_before_any_parent() -> None:
    attempt, _, refusal = decided(policy(), "quay.io")
    assert refusal is not None and refusal.reason is Reason.RULE_DENY and attempt.parent is None


def test_report_mode_sends_a_would_deny_through_the_global_parent() -> None:
    attempt, addresses, refusal = decided(policy(mode="report"), "quay.io")
    assert refusal is None and attempt.parent == "http://10.1.2.3:3128" and addresses == []


def test_an_ip_literal_is_still_checked_without_a_lookup() -> None:
    attempt, _, refusal = decided(policy(), "10.20.0.5")
    # A CIDR destination vouches for its own addresses: allowed, to the parent.
    assert refusal is None and attempt.resolved == ("10.20.0.5",)
    attempt, _, refusal = decided(policy(), "169.254.169.254")
    assert refusal is not None and refusal.reason is Reason.NO_RULE


def test_strict_transparent_mode_resolves_to_compare_the_original_destination() -> None:
    gate = policy(strict="true")
    attempt, _, refusal = decided(gate, "us.icr.io", original="203.0.113.9")
    assert refusal is not None and refusal.reason is Reason.ORIGINAL_DST_MISMATCH
    assert attempt.resolved == ("192.0.2.10",)
    attempt, addresses, refusal = decided(gate, "us.icr.io", original="192.0.2.10")
    assert refusal is None and attempt.parent is not None and addresses == ["192.0.2.10"]


def test_explain_says_the_connection_goes_through_the_parent() -> None:
    import ipaddress

    gate = policy()
    result = asyncio.run(explain_target(gate, ipaddress.ip_address(CLIENT), "us.icr.io"))
    assert "via      parent proxy http://10.1.2.3:3128: CONNECT us.icr.io:443" in result.to_text()
    assert result.to_dict()["parent"] == "http://10.1.2.3:3128"
    assert "resolution" not in result.to_dict()
    denied = asyncio.run(explain_target(gate, ipaddress.ip_address(CLIENT), "quay.io"))
    assert "parent" not in denied.to_dict() and "via" not in denied.to_text()


def test_check_tells_the_parents_refusal_from_a_network_failure() -> None:
    for reason, says in ((Reason.PARENT_REFUSED, "the parent proxy behind the proxy refused"),
                         (Reason.PARENT_FAILED, "cannot use its parent proxy")):
        step = Step("connect", Status.FAIL, "refused: 502 " + reason.value,
                    kind=Kind.PROXY_UPSTREAM, reason=reason.value)
        assert says in diagnose("us.icr.io", 443, step, "http://127.0.0.1:3128")


# --- the dial, against real loopback servers ---------------------------------------------


class Parent(ThreadedServer):
    """Reads a CONNECT head and answers `answer` (then `then`), or nothing."""

    def __init__(self, answer: bytes | None, then: bytes = b"") -> None:
        self.answer, self.then = answer, then
        self.heads: list[bytes] = []
        super().__init__(socket.create_server(("127.0.0.1", 0)))

    def serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.heads.append(head)
            if self.answer is None:
                time.sleep(3)
                return
            conn.sendall(self.answer + self.then)
            conn.recv(1)  # hold the connection until the client goes


def dial_through(server: Parent | None, port: int | None = None, timeout: float = 2
                 ) -> tuple[Attempt, socket.socket | Refusal]:
    address = server.listener.getsockname()[1] if server is not None else port
    gate = Gate(parse_policy(
        f"version: 1\nupstream_proxy: http://127.0.0.1:{address}\n"
        f"limits: {{connect_timeout: {timeout}}}\n"))
    attempt = Attempt(Mode.EXPLICIT, CLIENT, 1, "t", host="us.icr.io", port=443)
    assert gate.policy.upstream_proxy is not None

    async def go() -> socket.socket | Refusal:
        try:
            sock = await dial_parent(gate, Metrics(), attempt, gate.policy.upstream_proxy,
                                     Authority("us.icr.io", 443, False))
        except Refusal as exc:
            return exc
        # Read what arrives first through the tunnel, as the relay would.
        async with asyncio.timeout(2):
            data = await asyncio.get_running_loop().sock_recv(sock, 100)
        sock.close()
        return Refusal(data.decode(), status=200)

    return attempt, asyncio.run(go())


def test_the_tunnel_starts_after_the_answer_and_keeps_the_targets_first_bytes() -> None:
    with Parent(b"HTTP/1.1 200 Connection established\r\n\r\n", b"SSH-2.0-server") as parent:
        attempt, result = dial_through(parent)
    assert isinstance(result, Refusal) and result.status == 200
    assert result.message == "SSH-2.0-server" and attempt.parent_status == 200
    assert parent.heads == [b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n"]


@pytest.mark.parametrize(("answer", "reason", "status", "says"), [
    (b"HTTP/1.1 403 Forbidden\r\nServer: squid\r\n\r\n", Reason.PARENT_REFUSED, 502,
     "refused CONNECT us.icr.io:443: 403 Forbidden"),
    (b"SSH-2.0-not-a-proxy\r\n", Reason.PARENT_FAILED, 502, "did not answer in HTTP"),
    (None, Reason.PARENT_FAILED, 504, "no answer to CONNECT within 1 s"),
])
def test_what_the_parent_answers_decides_the_refusal(
    answer: bytes | None, reason: Reason, status: int, says: str
) -> None:
    with Parent(answer) as parent:
        _, result = dial_through(parent, timeout=1)
    assert isinstance(result, Refusal)
    assert (result.reason, result.status) == (reason, status) and says in result.message


def test_a_parent_that_is_down_is_parent_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempt, result = dial_through(None, port)
    assert isinstance(result, Refusal) and result.reason is Reason.PARENT_FAILED
    assert result.status == 502 and f"parent proxy http://127.0.0.1:{port}: unreachable" in \
        result.message
    assert attempt.parent == f"http://127.0.0.1:{port}" and attempt.parent_status is None
