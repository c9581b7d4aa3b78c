"""An experiment, off by default: the explicit CONNECT listener served as asyncio
Protocols from accept (bench/RESULTS.md, "Protocol from accept: the experiment").

`PORTCULLIS_PROTOCOL_ACCEPT=1` in `portcullis serve`'s environment hands the
explicit listener to `loop.create_server`: uvloop accepts and makes the
transport in C, the head and the ClientHello are parsed in `data_received` by
the same sans-IO parsers, the decision goes through the same admission steps
(authenticate, prepare), the dial is `loop.create_connection` to the checked
numeric address, and the tunnel is two transports joined (proxy/paired.py).
The decision and close records and the metrics are the ones the default path
writes.

What it leaves out, as an experiment: plain-HTTP requests (answered 501),
parent proxies and inspection (502: its tunnels go direct only), PROXY
protocol listeners (the switch is ignored there) and the drain of open
tunnels (the listener closes; open tunnels end with the process).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from portcullis.basics.errors import ClientHelloError, HttpError, QuotaExceeded, Refusal
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress, peer_address
from portcullis.basics.vocabulary import CloseReason, Mode, Reason
from portcullis.observe.events import new_connection_id
from portcullis.proxy.admission import authenticate, check_hello, prepare, refuse, stranger
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.dialer import error_kind
from portcullis.proxy.explicit import ESTABLISHED, raw_allowed
from portcullis.proxy.inspecting import inspects
from portcullis.proxy.paired import Pair, Side, Upstream
from portcullis.proxy.parent import parent_for
from portcullis.proxy.responses import error_response
from portcullis.proxy.state import FirewallState
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead, check_request, parse_request_head
from portcullis.wire.tls import parse_client_hello

SWITCH = "PORTCULLIS_PROTOCOL_ACCEPT"
_HEAD, _DECIDING, _HELLO, _RELAY, _GONE = range(5)


def switched_on() -> bool:
    return os.environ.get(SWITCH) == "1"


async def serve_protocols(state: FirewallState, listener: socket.socket) -> None:
    """Serve the explicit listener's connections as protocols until cancelled."""
    loop = asyncio.get_running_loop()
    live: set[Client] = set()
    # A duplicate: the server closes its own descriptor, Server._drain the original.
    server = await loop.create_server(lambda: Client(loop, state, live), sock=listener.dup(),
                                      backlog=4096)
    try:
        await loop.create_future()
    finally:
        server.close()


class Client(Side):
    """The client's socket: head, decision, dial, ClientHello, then one side of a Pair."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: FirewallState,
                 live: set[Client]) -> None:
        super().__init__()
        # Kept: on 3.11 every get_running_loop() checks the pid with a syscall.
        self.loop, self.state, self.live = loop, state, live
        self.stage = _HEAD
        self.buffer = bytearray()
        self.attempt: Attempt | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.upstream: Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.attempt = Attempt(Mode.EXPLICIT, host, port, new_connection_id())
        state = self.state
        if stranger(state.gate, peer_address(host)):
            self._refuse(Reason.SOURCE_UNKNOWN, 403, "this client is in no source group")
        elif state.draining or len(self.live) >= state.policy.limits.max_connections:
            reason = Reason.DRAINING if state.draining else Reason.OVER_CAPACITY
            self._refuse(reason, 503, "the proxy is at its connection limit")
        else:
            self.live.add(self)
            self.timer = self.loop.call_later(
                state.policy.limits.header_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        stage = self.stage
        if stage == _RELAY:
            Side.data_received(self, data)
        elif stage == _HEAD:
            self._head(data)
        elif stage == _HELLO:
            self._hello(data)
        else:
            self.buffer += data  # read before the pause took hold

    def eof_received(self) -> bool:
        if self.stage == _RELAY:
            return Side.eof_received(self)
        return False  # before the tunnel, the client's end is its leaving

    def connection_lost(self, exc: Exception | None) -> None:
        stage = self.stage
        if stage == _RELAY:
            Side.connection_lost(self, exc)
            return
        self.stage = _GONE
        self._stop_timer()
        self.live.discard(self)
        if stage == _HELLO:
            self._client_gone()

    # -- the head ---------------------------------------------------------------------

    def _head(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        try:
            head = parse_request_head(buffer, self.state.policy.limits.header_bytes)
            if head is None:
                return
            authority = check_request(head)
        except HttpError as exc:
            self._refuse(exc.reason, exc.status, exc.message)
            return
        if head.method != "CONNECT":
            self._refuse(Reason.BAD_REQUEST, 501,
                         f"plain HTTP is not served with {SWITCH}=1 (an experiment)")
            return
        self.stage = _DECIDING
        self._stop_timer()
        assert self.transport is not None
        self.transport.pause_reading()
        rest = bytes(buffer[head.head_length:])
        buffer.clear()
        self.task = self.loop.create_task(self._guarded(head, authority, rest))

    async def _guarded(self, head: RequestHead, authority: Authority, rest: bytes) -> None:
        try:
            await self._admit(head, authority, rest)
        except Exception as exc:  # a bug must cost one connection, never the listener
            assert self.transport is not None and self.attempt is not None
            self.transport.abort()
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.abort()
            self.attempt.release()
            self.state.log.log_error("handler failed", error=repr(exc), client=self.attempt.client)

    def _timed_out(self) -> None:
        self.timer = None
        if self.stage == _HEAD:
            self._refuse(Reason.HEADER_TIMEOUT, 408, "no complete request head in time")
        elif self.stage == _HELLO:
            assert self.attempt is not None
            self._hello_checked(refuse(self.state.gate, self.attempt, Reason.HEADER_TIMEOUT))

    # -- the decision and the dial ------------------------------------------------------

    async def _admit(self, head: RequestHead, authority: Authority, rest: bytes) -> None:
        state, attempt = self.state, self.attempt
        assert attempt is not None and self.transport is not None
        gate = state.gate
        try:
            await authenticate(gate, state.metrics, attempt, head, authority)
            self.upstream = await self._dial(authority)
        except Refusal as refusal:
            state.record(attempt)
            if self.stage != _GONE:
                self.transport.write(error_response(refusal.status, attempt, refusal.message,
                                                    realm=gate.policy.auth.realm))
                self.transport.close()
            attempt.release()
            return
        if self.stage == _GONE:
            self._client_gone()
            return
        self.transport.write(ESTABLISHED)
        self.buffer += rest
        if authority.port in gate.policy.tls_ports or not raw_allowed(attempt):
            self.stage = _HELLO
            self.timer = self.loop.call_later(
                gate.policy.limits.client_hello_timeout, self._timed_out)
            self.transport.resume_reading()
            self._hello(b"")
        else:
            self._relay()

    async def _dial(self, authority: Authority) -> Side:
        state, attempt = self.state, self.attempt
        assert attempt is not None
        gate, metrics = state.gate, state.metrics
        try:
            addresses = await prepare(gate, attempt, authority, charge=True)
        except QuotaExceeded as exc:
            metrics.quota_refused(exc.group, exc.limit)
            raise
        finally:
            if attempt.dns_ms is not None:
                metrics.observe_dns(attempt.dns_ms / 1000)
        if parent_for(gate, attempt.matched) is not None or inspects(attempt) is not None:
            refuse(gate, attempt, Reason.CONNECT_FAILED)
            raise Refusal(f"{SWITCH}=1 (an experiment) serves direct tunnels only",
                          reason=Reason.CONNECT_FAILED, status=502)
        try:
            return await _connect(state, attempt, addresses, authority.port)
        except Refusal as refusal:
            refuse(gate, attempt, refusal.reason)
            raise

    # -- the ClientHello and the tunnel ---------------------------------------------------

    def _hello(self, data: bytes) -> None:
        attempt = self.attempt
        assert attempt is not None
        self.buffer += data
        try:
            hello = parse_client_hello(self.buffer)
        except ClientHelloError as exc:
            self._hello_checked(refuse(self.state.gate, attempt, exc.reason))
            return
        if hello is not None:
            self._hello_checked(check_hello(self.state.gate, attempt, hello.sni, hello.has_ech))

    def _hello_checked(self, go_on: bool) -> None:
        assert self.attempt is not None and self.transport is not None
        if go_on:
            self._relay()
            return
        self.state.record(self.attempt)
        self._stop_timer()
        self.stage = _GONE
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.close()
        self.transport.close()
        self.attempt.release()

    def _relay(self) -> None:
        state, attempt, upstream = self.state, self.attempt, self.upstream
        assert attempt is not None and upstream is not None and upstream.transport is not None
        self._stop_timer()
        self.stage = _RELAY
        state.record(attempt)
        state.metrics.connection_opened(attempt.mode)
        peeked = bytes(self.buffer)
        self.buffer = bytearray()
        pair = Pair(self.loop, self, upstream,
                    state.policy.limits.idle_timeout, self._closed)
        pair.start(peeked)

    def _closed(self, bytes_up: int, bytes_down: int, reason: CloseReason) -> None:
        assert self.attempt is not None
        self.live.discard(self)
        self.state.metrics.connection_closed(self.attempt.mode)
        self.attempt.release()
        self.state.record_close(self.attempt, bytes_up, bytes_down, reason)

    # -- endings before the tunnel ----------------------------------------------------------

    def _refuse(self, reason: Reason, status: int, detail: str) -> None:
        assert self.attempt is not None and self.transport is not None
        self._stop_timer()
        self.stage = _GONE
        self.state.refuse_and_record(self.attempt, reason)
        self.transport.write(error_response(status, self.attempt, detail))
        self.transport.close()

    def _client_gone(self) -> None:
        # The decision stands (the tunnel was allowed); the close record says
        # the client left before its first bytes.
        assert self.attempt is not None
        self.state.record(self.attempt)
        self.state.record_close(self.attempt, 0, 0, CloseReason.CLIENT_GONE)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.attempt.release()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def _connect(state: FirewallState, attempt: Attempt, addresses: list[IPAddress],
                   port: int) -> Side:
    """The first checked address that answers, as a paused transport; Refusal if none."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = loop.time() + state.policy.limits.connect_timeout
    last = Refusal("no address to dial", reason=Reason.CONNECT_FAILED, status=502)
    for address in addresses:
        target = format_hostport(address, port)
        try:
            async with asyncio.timeout_at(deadline):
                _, side = await loop.create_connection(Upstream, str(address), port)
        except TimeoutError:
            state.metrics.connect_error("timeout")
            last = Refusal(f"connecting to {target} timed out",
                           reason=Reason.CONNECT_TIMEOUT, status=504)
            break
        except OSError as exc:
            state.metrics.connect_error(error_kind(exc))
            last = Refusal(f"connecting to {target} failed: {exc.strerror}",
                           reason=Reason.CONNECT_FAILED, status=502)
            continue
        attempt.connect_ms = (time.monotonic() - started) * 1000
        state.metrics.observe_connect(attempt.connect_ms / 1000)
        attempt.dialed = target
        return side
    attempt.connect_ms = (time.monotonic() - started) * 1000
    raise last
