"""The plain-HTTP keep-alive loop without sockets, for the fuzzers: a client's
byte stream is cut into requests exactly as `proxy/plain.py` cuts it (strict
head parser, `proxy_authority`, one h11 connection per request, bodies and
trailers through proxy/forwarding.py), and every request that would be
forwarded is serialized as the proxy would send it.

`drive` returns what happened and raises AssertionError on a broken
invariant; any other exception than the parsers' own is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from portcullis.basics.errors import HttpError
from portcullis.proxy.forwarding import allowed_trailers, client_request, outgoing_request
from portcullis.proxy.plain import proxy_authority
from portcullis.wire.http1 import check_request, parse_request_head

FORBIDDEN_IN_TRAILERS = {b"host", b"content-length", b"transfer-encoding", b"connection",
                         b"authorization", b"proxy-authorization", b"cookie", b"trailer"}


@dataclass
class Outcome:
    forwarded: int = 0  # requests that reached the point of being sent upstream
    refused: str | None = None  # why the loop stopped with an answer, if it did


def drive(stream: bytes, max_head: int = 16384) -> Outcome:
    outcome = Outcome()
    pending = stream
    while pending:
        try:
            head = parse_request_head(pending, max_head)
            if head is None:
                return outcome  # the proxy would wait for more bytes
            authority = proxy_authority(head)
        except HttpError as exc:
            outcome.refused = f"{exc.status} {exc.reason}"
            return outcome
        if head.method == "CONNECT":
            raise AssertionError("a CONNECT on the plain path was decided")
        try:
            conn, request = client_request(pending, max_head)
        except h11.RemoteProtocolError as exc:
            outcome.refused = f"400 h11: {exc}"
            return outcome
        outgoing = outgoing_request(request, authority)
        upstream = h11.Connection(h11.CLIENT)
        wire = upstream.send(outgoing) or b""  # LocalProtocolError here would be a bug
        _check_forwarded_head(wire, authority.host, authority.port)
        outcome.forwarded += 1
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                outcome.refused = "body framing"
                return outcome
            if event is h11.NEED_DATA:
                return outcome  # the body is not all here; the proxy would read on
            if isinstance(event, h11.EndOfMessage):
                event = allowed_trailers(event)
                names = {name for name, _ in event.headers}
                if names & FORBIDDEN_IN_TRAILERS:
                    raise AssertionError(f"forbidden trailers forwarded: {names}")
                upstream.send(event)
                break
            upstream.send(event)
        rest = conn.trailing_data[0]
        if len(rest) >= len(pending):
            raise AssertionError("a request consumed no bytes")
        pending = rest
    return outcome


def _check_forwarded_head(wire: bytes, host: str, port: int) -> None:
    """What goes upstream is one strictly valid head whose Host is the name decided on."""
    forwarded = parse_request_head(wire, 1 << 20)
    if forwarded is None or forwarded.head_length != len(wire):
        raise AssertionError(f"the forwarded head does not parse: {wire[:200]!r}")
    absolute = forwarded.__class__(
        method=forwarded.method, target=f"http://{forwarded.get('host')}{forwarded.target}",
        version=forwarded.version, headers=forwarded.headers, head_length=0,
    )
    decided = check_request(absolute)
    if (decided.host, decided.port) != (host, port):
        raise AssertionError(f"forwarded Host {forwarded.get('host')!r} is not {host}:{port}")
