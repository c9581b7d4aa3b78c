"""What transparent mode decides on: the name in a server_name, the Host of a
redirected plain-HTTP request (the sockets and the relay are tested end to end
in tests/e2e/test_transparent.py)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket

import pytest

from portcullis.basics.errors import AuthorityError, BadRequest
from portcullis.config import parse_policy
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.proxy import transparent
from portcullis.proxy.state import FirewallState
from portcullis.proxy.transparent import host_authority, sni_host
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead, parse_request_head


@pytest.mark.parametrize(
    ("sni", "host"),
    [("us.icr.io", "us.icr.io"), ("US.ICR.IO.", "us.icr.io"), ("Dd0.Icr.Io", "dd0.icr.io")],
)
def test_sni_host_normalizes(sni: str, host: str) -> None:
    assert sni_host(sni) == host


@pytest.mark.parametrize(
    "sni",
    ["10.0.0.1", "127.1", "us.icr.io:443", "[::1]", "user@us.icr.io", "", "a..b", "x" * 64 + ".io"],
)
def test_sni_host_refuses_what_is_not_a_host_name(sni: str) -> None:
    with pytest.raises(AuthorityError):
        sni_host(sni)


def head(raw: bytes) -> RequestHead:
    parsed = parse_request_head(raw)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET /v2/ HTTP/1.1\r\nHost: plain.icr.io\r\n\r\n", Authority("plain.icr.io", 80, False)),
        # The redirected port decides, whatever port the Host names.
        (b"GET / HTTP/1.1\r\nHost: Plain.ICR.io:8080\r\n\r\n",
         Authority("plain.icr.io", 80, False)),
        (b"GET http://plain.icr.io/x HTTP/1.1\r\nHost: plain.icr.io\r\n\r\n",
         Authority("plain.icr.io", 80, False)),
        (b"GET / HTTP/1.0\r\nHost: 10.1.2.3\r\n\r\n", Authority("10.1.2.3", 80, True)),
    ],
)
def test_host_authority(raw: bytes, expected: Authority) -> None:
    assert host_authority(head(raw), 80) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.icr.io\r\nHost: b.icr.io\r\n\r\n",
        b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\n\r\n",
        b"GET http://a.icr.io/ HTTP/1.1\r\nHost: b.icr.io\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.icr.io\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a.icr.io\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a.icr.io\r\n\r\n",
    ],
    ids=["no-host", "two-hosts", "connect", "host-disagrees", "cl-and-te", "userinfo", "asterisk"],
)
def test_host_authority_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        host_authority(head(raw), 80)


def test_silent_client_on_a_plain_port_is_recorded_as_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A redirected port-80 connection that never sends a byte is refused at the
    # header timeout, and that refusal is logged (decisions.md: no name, no
    # report), not dropped silently as if the client had gone away.
    policy = parse_policy("version: 1\nlimits: {header_timeout: 0.2}\n")
    out = io.StringIO()
    state = FirewallState(policy, DecisionLog(out), Metrics())
    redirected = (ipaddress.ip_address("192.0.2.80"), 80)
    monkeypatch.setattr(transparent, "original_dst", lambda sock: redirected)

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        conn, peer = listener.accept()
        conn.setblocking(False)
        try:
            await asyncio.wait_for(transparent.handle_transparent(state, conn, peer), 5)
        finally:
            client.close()
            listener.close()

    asyncio.run(main())
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    decisions = [r for r in records if r["event"] == "decision"]
    assert [(d["decision"], d["reason"], d["original_dst"]) for d in decisions] == [
        ("deny", "header_timeout", "192.0.2.80:80")
    ]
