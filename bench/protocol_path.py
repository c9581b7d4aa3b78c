"""A measured sketch, not the product: the explicit CONNECT path redesigned as
the floor relay is built (uvloop protocols from accept, the tunnel relayed by
uvloop's transports in C), doing Portcullis's own per-connection work on the
way: the strict head parser and its checks, the Attempt, the engine's
decision, the resolver and the address checks, the ClientHello parse and its
check against the decided name, the decision and close lines, the metrics.

What it leaves out, and a real redesign would have to keep: the header,
ClientHello, connect and idle timeouts, drain, connection limits and quotas,
logins, parent proxies, inspection, the PROXY protocol, plain HTTP, the
splice path for bulk tunnels (a copy through user space costs about twice
the CPU per GiB, bench/findings.md), half-closes (an end closes the tunnel,
as in the floor). So it bounds from below what such a redesign would cost
per connection: the question it answers is whether the redesign could reach
the target (bench/findings.md, "The connection path as protocols").

    python -m bench.protocol_path serve -c POLICY --log FILE
    (as `portcullis serve`, for bench/servers.py; bench.ab and bench.perf_split --sketch)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import cast

import uvloop

from portcullis.basics.errors import ClientHelloError, HttpError
from portcullis.basics.hostport import format_hostport, parse_hostport
from portcullis.basics.vocabulary import CloseReason, Mode, Reason
from portcullis.config import load_policy
from portcullis.observe.events import new_connection_id
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.proxy.admission import (
    address_refusal,
    check_hello,
    decide,
    refuse,
    resolve_and_check,
)
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import check_request, parse_request_head
from portcullis.wire.tls import parse_client_hello

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Upstream(asyncio.Protocol):
    """The upstream socket of a tunnel: what it reads goes to the client."""

    transport: asyncio.Transport

    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.client.down += len(data)
        self.client.transport.write(data)

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.end(CloseReason.UPSTREAM_RESET if exc else CloseReason.DONE)


class Client(asyncio.Protocol):
    """The client's socket: the head, the decision, the dial, the hello, then the relay."""

    transport: asyncio.Transport
    upstream: Upstream | None = None
    relaying = False
    ended = False

    def __init__(self, state: FirewallState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.hello_due = False
        self.up = self.down = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.attempt = Attempt(Mode.EXPLICIT, host, port, new_connection_id())

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            assert self.upstream is not None
            self.up += len(data)
            self.upstream.transport.write(data)
            return
        self.buffer += data
        if self.hello_due:
            self.check_hello()
            return
        limits = self.state.policy.limits
        try:
            head = parse_request_head(self.buffer, limits.header_bytes)
            if head is None:
                return
            authority = check_request(head)
        except HttpError as exc:
            self.refuse(exc.reason, exc.status, exc.message)
            return
        del self.buffer[: head.head_length]
        if head.method != "CONNECT":
            self.refuse(Reason.BAD_REQUEST, 400, "the sketch relays CONNECT only")
            return
        if not decide(self.state.gate, self.attempt, authority):
            self.refuse(self.attempt.reason, 403, "")
            return
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self.dial(authority))

    async def dial(self, authority: Authority) -> None:
        state, attempt = self.state, self.attempt
        checked = attempt.checked = await resolve_and_check(state.gate, attempt)
        refusal = address_refusal(checked, authority.host)
        if refusal is not None:
            self.refuse(refusal.reason, refusal.status, refusal.message)
            return
        address = str(checked.dialable[0])
        started = time.monotonic()
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self), address, authority.port)
        except OSError as exc:
            self.refuse(Reason.CONNECT_FAILED, 502, str(exc))
            return
        attempt.connect_ms = (time.monotonic() - started) * 1000
        state.metrics.observe_connect(attempt.connect_ms / 1000)
        attempt.dialed = format_hostport(address, authority.port)
        self.upstream = upstream
        if self.transport.is_closing():
            upstream.transport.close()
            return
        self.transport.write(ESTABLISHED)
        self.hello_due = True
        if self.buffer:
            self.check_hello()
        self.transport.resume_reading()

    def check_hello(self) -> None:
        state, attempt, upstream = self.state, self.attempt, self.upstream
        assert upstream is not None
        try:
            hello = parse_client_hello(self.buffer)
            if hello is None:
                return
            go_on = check_hello(state.gate, attempt, hello.sni, hello.has_ech)
        except ClientHelloError as exc:
            go_on = refuse(state.gate, attempt, exc.reason)
        if not go_on:
            state.record(attempt)
            upstream.transport.close()
            self.transport.close()
            return
        state.record(attempt)
        state.metrics.connection_opened(attempt.mode)
        self.relaying = True
        self.up = len(self.buffer)
        upstream.transport.write(bytes(self.buffer))
        self.buffer.clear()

    def refuse(self, reason: Reason, status: int, detail: str) -> None:
        # Recording the reason again where a step already did is harmless: same values.
        refuse(self.state.gate, self.attempt, reason)
        self.state.record(self.attempt)
        self.transport.write(error_response(status, self.attempt, detail))
        self.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(CloseReason.CLIENT_RESET if exc else CloseReason.DONE)

    def end(self, reason: CloseReason) -> None:
        """Either side's end closes both (close() sends what is buffered first)."""
        if self.ended:
            return
        self.ended = True
        if self.upstream is not None:
            self.upstream.transport.close()
        self.transport.close()
        if self.relaying:
            self.state.metrics.connection_closed(self.attempt.mode)
            self.state.record_close(self.attempt, self.up, self.down, reason)


async def serve(policy_path: str, log_path: str) -> None:
    policy = load_policy(Path(policy_path))
    log = DecisionLog(log_path)
    state = FirewallState(policy, log, Metrics())
    assert policy.listen.explicit is not None
    host, port = parse_hostport(policy.listen.explicit)
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(state), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    log.log_info("listening", explicit=format_hostport(bound[0], bound[1]))
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--workers", type=int, choices=[1], default=1)
    args = parser.parse_args()
    uvloop.run(serve(args.config, args.log))


if __name__ == "__main__":
    main()
