"""The inspected data path: decrypt, then hand each request to the session.

Admission (decide, resolve, check, dial) has run as for any tunnel; for a rule
with `inspect:` this takes over from `FirewallState.relay_tunnel`. Client TLS
ends here with a leaf minted for the decided name (ALPN http/1.1 only); a
second TLS connection, verified for that name, goes to the upstream address
admission dialled. Between them runs `inspected_session.Session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from portcullis.basics.errors import HttpError
from portcullis.basics.vocabulary import Reason
from portcullis.policy.inspection import Inspection, inspection_for
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.inspected_session import Session
from portcullis.proxy.inspector import (
    NO_APPLICATION_PROTOCOL_ALERT,
    client_failure,
    inspector_for,
    offers_http1,
)
from portcullis.proxy.reading import send_quietly
from portcullis.proxy.registry_answers import raw_error
from portcullis.proxy.state import FirewallState
from portcullis.proxy.tlsstream import TlsClosed, TlsStream
from portcullis.wire.http1 import parse_request_head


def inspects(attempt: Attempt) -> Inspection | None:
    """The inspection of the rule that allowed `attempt`, if it inspects."""
    rule = attempt.matched
    if rule is None or rule.inspect is None:
        return None  # most rules: no call, no lookup of Decision.ALLOW
    return inspection_for(rule.inspect, attempt.decision)


async def serve_inspected(state: FirewallState, conn: socket.socket, upstream_sock: socket.socket,
                          peeked: bytes, attempt: Attempt, alpn: tuple[str, ...],
                          rule: Inspection) -> None:
    """Serve an admitted, inspected connection until either side is done; closes
    `upstream_sock` (the caller closes `conn`)."""
    gate = state.gate
    tls, limits = gate.policy.tls_inspection, gate.limits
    assert tls is not None and attempt.host is not None  # the policy model requires both
    host = attempt.host
    try:
        if not offers_http1(alpn):
            state.refuse_and_record(attempt, Reason.NOT_HTTP1)
            await send_quietly(conn, NO_APPLICATION_PROTOCOL_ALERT)
            return
        inspector = inspector_for(tls)
        client = TlsStream(conn, inspector.ca.context_for(host), server_side=True,
                           initial=peeked, send_timeout=limits.idle_timeout)
        try:
            await client.handshake(limits.client_hello_timeout)
        except (ssl.SSLError, TlsClosed, TimeoutError) as exc:
            reason = client_failure(exc)
            state.refuse_and_record(attempt, reason)
            if reason is Reason.CLIENT_UNTRUSTED_CA:
                state.log.log_error(
                    "the client does not trust the Portcullis CA; install it on the worker"
                    " (`portcullis ca show`)", client=attempt.client, host=host)
            return
        upstream = TlsStream(upstream_sock, inspector.upstream, server_side=False,
                             server_hostname=host, send_timeout=limits.idle_timeout)
        try:
            await upstream.handshake(limits.connect_timeout)
        except (ssl.SSLError, TlsClosed, TimeoutError) as exc:
            state.refuse_and_record(attempt, Reason.UPSTREAM_TLS)
            await _answer_first(client, limits.header_timeout, limits.header_bytes,
                                f"cannot verify {host}: {_tls_error(exc)}", attempt.rule)
            await client.close()
            return
        state.record(attempt)
        session = Session(state, attempt, rule, client, upstream)
        state.metrics.connection_opened(attempt.mode)
        try:
            closed = await session.run()
        finally:
            state.metrics.connection_closed(attempt.mode)
            await client.close()
        state.record_close(attempt, session.up, session.down, closed)
    finally:
        upstream_sock.close()


def _tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    return str(exc) or type(exc).__name__


async def _answer_first(client: TlsStream, timeout: float, max_head: int, message: str,
                        rule: str | None) -> None:
    """Read the first request head (so the client reads an answer, not a reset) and
    answer it 502 upstream_tls."""
    buffer = bytearray()
    with contextlib.suppress(TlsClosed, HttpError, TimeoutError):
        async with asyncio.timeout(timeout):
            while parse_request_head(buffer, max_head) is None:
                data = await client.recv(timeout)
                if not data:
                    return
                buffer += data
    with contextlib.suppress(TlsClosed):
        await client.send(raw_error(502, message, Reason.UPSTREAM_TLS, rule))
