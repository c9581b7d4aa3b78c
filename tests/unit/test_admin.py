from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_network
from typing import Any

import pytest

from portcullis.basics.ip import IPNetwork
from portcullis.basics.vocabulary import Decision, Reason
from portcullis.observe.admin import AdminServer, ExplainResult, client_address
from portcullis.observe.events import DecisionEvent
from portcullis.observe.explain_query import ExplainQuery
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


class State:
    def __init__(self) -> None:
        self.ready = True
        self.draining = False
        self.calls: list[tuple[str, ...]] = []
        self.metrics = Metrics()
        self.logbuf = io.StringIO()

    def explain(self, query: ExplainQuery) -> ExplainResult:
        src, dst, sni = str(query.source), query.target, query.sni
        self.calls.append((src, dst) if sni is None else (src, dst, sni))
        if dst.startswith("denied"):
            return 403, {"decision": "deny", "reason": "no_rule", "to": dst}
        return 200, {"decision": "allow", "from": src, "to": dst}


@asynccontextmanager
async def admin(
    host: str = "127.0.0.1",
    explain: Callable[[ExplainQuery], ExplainResult | Awaitable[ExplainResult]] | None = None,
    allowed: tuple[IPNetwork, ...] | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[AdminServer, State]]:
    st = State()
    extra: dict[str, Any] = dict(kw)
    if allowed is not None:
        extra["allowed_clients"] = allowed
    server = AdminServer(
        metrics=st.metrics,
        ready=lambda: st.ready,
        draining=lambda: st.draining,
        explain=explain or st.explain,
        log=DecisionLog(st.logbuf),
        **extra,
    )
    await server.start(host, 0)
    try:
        yield server, st
    finally:
        await server.close()


async def raw(port: int, data: bytes, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    resp = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status_line.split()[1]), headers, body


async def get(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    hosthdr = f"[{host}]" if ":" in host else host
    req = f"GET {target} HTTP/1.1\r\nHost: {hosthdr}\r\n\r\n".encode()
    return await raw(port, req, host)


def test_healthz_with_http_client() -> None:
    async def main() -> None:
        async with admin() as (srv, _):

            def fetch() -> tuple[int, str, bytes, str | None]:
                c = http.client.HTTPConnection("127.0.0.1", srv.bound_port, timeout=5)
                c.request("GET", "/healthz")
                r = c.getresponse()
                out = (
                    r.status,
                    r.getheader("Content-Type", ""),
                    r.read(),
                    r.getheader("Connection"),
                )
                c.close()
                return out

            status, ctype, body, conn = await asyncio.to_thread(fetch)
            assert (status, body, conn) == (200, b"ok\n", "close")
            assert ctype.startswith("text/plain")

    asyncio.run(main())


def test_readyz_follows_callbacks() -> None:
    async def main() -> None:
        async with admin() as (srv, st):
            assert (await get(srv.bound_port, "/readyz"))[::2] == (200, b"ready\n")
            st.ready = False
            assert (await get(srv.bound_port, "/readyz"))[::2] == (503, b"not ready\n")
            st.draining = True
            assert (await get(srv.bound_port, "/readyz"))[::2] == (503, b"draining\n")

    asyncio.run(main())


def test_readyz_callback_error_is_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    async def main() -> None:
        srv = AdminServer(metrics=Metrics(), ready=broken, explain=lambda q: (200, {}))
        await srv.start("127.0.0.1", 0)
        try:
            assert (await get(srv.bound_port, "/readyz"))[::2] == (503, b"not ready\n")
        finally:
            await srv.close()

    asyncio.run(main())


def test_metrics_route_serves_prometheus_text() -> None:
    async def main() -> None:
        async with admin() as (srv, st):
            st.metrics.record_decision(
                DecisionEvent(
                    time=0.0,
                    id="a-1",
                    client="10.0.0.1",
                    client_port=1,
                    mode="explicit",
                    host="us.icr.io",
                    port=443,
                    sni=None,
                    rule="ibm",
                    decision=Decision.ALLOW,
                    reason=Reason.RULE_ALLOW,
                )
            )
            status, headers, body = await get(srv.bound_port, "/metrics")
            assert status == 200
            assert headers["content-type"].startswith("text/plain; version=")
            assert (
                b'portcullis_decisions_total{decision="allow",reason="rule_allow",rule="ibm"} 1.0'
                in body
            )

    asyncio.run(main())


def test_explain_passes_parameters_and_status() -> None:
    async def main() -> None:
        async with admin() as (srv, st):
            status, headers, body = await get(
                srv.bound_port, "/explain?from=10.240.0.7&to=us.icr.io%3A443"
            )
            assert status == 200
            assert headers["content-type"] == "application/json"
            assert json.loads(body) == {
                "decision": "allow",
                "from": "10.240.0.7",
                "to": "us.icr.io:443",
            }
            status, _, body = await get(srv.bound_port, "/explain?to=denied.example&from=::1")
            assert status == 403
            assert json.loads(body)["reason"] == "no_rule"
            await get(srv.bound_port, "/explain?from=::1&to=us.icr.io&sni=evil.example")
            assert st.calls == [
                ("10.240.0.7", "us.icr.io:443"),
                ("::1", "denied.example"),
                ("::1", "us.icr.io", "evil.example"),
            ]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("", "'from' missing"),
        ("?from=10.0.0.1", "'to' missing"),
        ("?to=a.example", "'from' missing"),
        ("?from=&to=a.example", "'from' missing"),
        ("?from=10.0.0.1&from=10.0.0.2&to=a.example", "'from' repeated"),
        ("?from=not-an-ip&to=a.example", "not an IP"),
        ("?from=10.0.0.1&to=a.example&sni=", "'sni' is repeated or empty"),
        ("?from=10.0.0.1&to=a.example&sni=a.example&sni=b.example", "'sni' is repeated"),
        ("?" + "&".join(f"k{i}=v" for i in range(20)), "too many"),
    ],
)
def test_explain_bad_parameters_are_400_json(query: str, needle: str) -> None:
    async def main() -> None:
        async with admin() as (srv, st):
            status, headers, body = await get(srv.bound_port, "/explain" + query)
            assert status == 400
            assert headers["content-type"] == "application/json"
            assert needle in json.loads(body)["error"]
            assert st.calls == []

    asyncio.run(main())


def test_explain_async_callable_errors_and_timeouts() -> None:
    async def slow_or_bad(query: ExplainQuery) -> ExplainResult:
        dst = query.target
        if dst == "slow.example":
            await asyncio.sleep(5)
        if dst == "raise.example":
            raise RuntimeError("resolver exploded")
        if dst == "badstatus.example":
            return 42, {}
        return 200, {"async": True, "to": dst}

    async def main() -> None:
        async with admin(explain=slow_or_bad, explain_timeout=0.2) as (srv, st):
            p = srv.bound_port
            status, _, body = await get(p, "/explain?from=10.0.0.1&to=ok.example")
            assert (status, json.loads(body)) == (200, {"async": True, "to": "ok.example"})
            assert (await get(p, "/explain?from=10.0.0.1&to=slow.example"))[0] == 504
            assert (await get(p, "/explain?from=10.0.0.1&to=raise.example"))[0] == 500
            assert (await get(p, "/explain?from=10.0.0.1&to=badstatus.example"))[0] == 500
            errors = [json.loads(x) for x in st.logbuf.getvalue().splitlines()]
            assert [e["msg"] for e in errors] == ["explain failed", "explain returned a bad status"]
            assert "resolver exploded" in errors[0]["error"]
            # The listener survived all of that.
            assert (await get(p, "/healthz"))[0] == 200

    asyncio.run(main())


def test_unknown_path_404_and_other_methods_405() -> None:
    async def main() -> None:
        async with admin() as (srv, _):
            p = srv.bound_port
            assert (await get(p, "/nope"))[0] == 404
            assert (await get(p, "/healthz/"))[0] == 404
            status, headers, _ = await raw(p, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, headers["allow"]) == (405, "GET")
            # A request body the server never reads still gets a readable answer.
            status, _, _ = await raw(
                p,
                b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"x" * 20000,
            )
            assert status == 405
            assert (await raw(p, b"DELETE /nope HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 404

    asyncio.run(main())


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x",  # EOF mid-head (client half-closes)
    ],
)
def test_malformed_requests_are_400(data: bytes) -> None:
    async def main() -> None:
        async with admin() as (srv, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
            writer.write(data)
            writer.write_eof()
            resp = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert resp.startswith(b"HTTP/1.1 400 "), resp[:60]

    asyncio.run(main())


def test_oversize_head_is_431() -> None:
    async def main() -> None:
        async with admin(max_head=4096) as (srv, _):
            big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n"
            assert (await raw(srv.bound_port, big))[0] == 431
            # A head just under the limit is still served.
            ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n"
            assert (await raw(srv.bound_port, ok))[0] == 200

    asyncio.run(main())


def test_head_timeout_is_a_total_deadline() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        # One byte every 100 ms: every read succeeds, the head never ends.
        with contextlib.suppress(ConnectionError, OSError):
            for ch in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                writer.write(bytes([ch]))
                await writer.drain()
                await asyncio.sleep(0.1)

    async def main() -> None:
        async with admin(head_timeout=0.5) as (srv, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
            start = time.monotonic()
            slow = asyncio.create_task(trickle(writer))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            elapsed = time.monotonic() - start
            slow.cancel()
            writer.close()
            assert head.startswith(b"HTTP/1.1 408 ")
            assert 0.4 < elapsed < 1.5

    asyncio.run(main())


def test_client_outside_allowed_ranges_gets_403() -> None:
    async def main() -> None:
        async with admin(allowed=(ip_network("10.0.0.0/8"),)) as (srv, st):
            for target in ("/healthz", "/metrics", "/explain?from=10.0.0.1&to=x.example"):
                status, _, body = await get(srv.bound_port, target)
                assert (status, body) == (403, b"forbidden\n")
            assert st.calls == []

    asyncio.run(main())


def test_v4_and_v6_loopback_are_distinct_networks() -> None:
    async def main() -> None:
        # Only ::1 admitted: a client from 127.0.0.1 is refused ...
        async with admin(allowed=(ip_network("::1/128"),)) as (srv, _):
            assert (await get(srv.bound_port, "/healthz"))[0] == 403
        # ... and the reverse, over a real IPv6 listener.
        async with admin(host="::1", allowed=(ip_network("127.0.0.0/8"),)) as (srv, _):
            assert (await get(srv.bound_port, "/healthz", host="::1"))[0] == 403
        # The default admits both loopbacks.
        async with admin(host="::1") as (srv, _):
            assert (await get(srv.bound_port, "/healthz", host="::1"))[0] == 200

    asyncio.run(main())


def test_dual_stack_socket_sees_mapped_v4_and_admits_it() -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))
        sock.listen()
        srv = AdminServer(metrics=Metrics(), ready=lambda: True, explain=lambda q: (200, {}))
        await srv.start_socket(sock)
        try:
            # The peer address here is ::ffff:127.0.0.1, admitted by 127.0.0.0/8.
            assert (await get(srv.bound_port, "/healthz"))[0] == 200
        finally:
            await srv.close()

    asyncio.run(main())


def test_client_address_normalization() -> None:
    assert str(client_address(("::ffff:127.0.0.1", 1, 0, 0))) == "127.0.0.1"
    assert str(client_address(("fe80::1%eth0", 1, 0, 2))) == "fe80::1"
    assert str(client_address(("10.1.2.3", 5))) == "10.1.2.3"
    assert client_address("") is None  # AF_UNIX
    assert client_address(None) is None
    assert client_address(("not-an-ip", 1)) is None


def test_connection_limit_and_close_with_idle_clients() -> None:
    async def main() -> None:
        async with admin(max_connections=2, head_timeout=10) as (srv, st):
            p = srv.bound_port
            idle = [await asyncio.open_connection("127.0.0.1", p) for _ in range(2)]
            await asyncio.sleep(0.1)
            # Refused at once, and told so: its request does not turn the
            # close into a reset that loses the answer.
            status, headers, body = await get(p, "/metrics")
            assert (status, headers["retry-after"]) == (503, "1")
            assert body == b"too many admin connections\n"
            lines = [json.loads(x) for x in st.logbuf.getvalue().splitlines()]
            assert [(r["msg"], r["client"], r["max_connections"]) for r in lines] == [
                ("admin connection refused: at capacity", "127.0.0.1", 2)
            ]
            for _, w in idle:
                w.close()
            await asyncio.sleep(0.1)
            assert (await get(p, "/healthz"))[0] == 200
            idle = [await asyncio.open_connection("127.0.0.1", p)]
            await asyncio.sleep(0.05)
            start = time.monotonic()
        # Leaving the block closed the server with an idle client still connected.
        assert time.monotonic() - start < 2
        assert await asyncio.wait_for(idle[0][0].read(), 5) == b""
        idle[0][1].close()

    asyncio.run(main())


def test_bound_port_before_start_raises() -> None:
    srv = AdminServer(metrics=Metrics(), ready=lambda: True, explain=lambda q: (200, {}))
    with pytest.raises(RuntimeError):
        _ = srv.bound_port
