"""The registry end of an inspected connection, as h11 events, and what each
of its failures means for the client (proxy/inspected_session.py).

Before any answer reached the client, a failure is owed one (`Unanswered`):
`502` for an upstream that closed, failed or answered something that is not
HTTP/1.1, `504` for one silent (or taking nothing) for `idle_timeout`. The one
exception is a close on a connection kept alive from an earlier request: the
race every HTTP client retries on (RFC 9112 §9.3.1), so it ends the client's
connection as quietly (`End`).
"""

from __future__ import annotations

import h11

from portcullis.basics.vocabulary import CloseReason
from portcullis.proxy.forwarding import not_http_answer, upstream_failure_answer
from portcullis.proxy.tlsstream import TlsClosed, TlsStream


class End(Exception):
    """Stop serving this connection, for `reason`."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Unanswered(Exception):
    """A forwarded request failed before any answer reached the client: the
    client is owed `status` with `message`, then the connection ends for `reason`."""

    def __init__(self, status: int, message: str, reason: CloseReason) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class InspectedUpstream:
    """The upstream's TLS stream and its h11 state, one request at a time."""

    def __init__(self, stream: TlsStream, idle_timeout: float) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_timeout = idle_timeout
        self.answered = 0  # requests answered on this connection

    async def send(self, event: h11.Event) -> None:
        """Send one event of the request; Unanswered (or End) when that fails."""
        try:
            await self.stream.send(self.h11.send(event) or b"")
        except TlsClosed as exc:
            raise self._ended(exc, sending=True) from exc

    async def next_event(self) -> h11.Event:
        """The upstream's next event; Unanswered (or End) when it closed,
        failed, stalled or broke HTTP/1.1."""
        while True:
            try:
                got = self.h11.next_event()
                if got is not h11.NEED_DATA:
                    break
                self.h11.receive_data(await self.stream.recv(self.idle_timeout))
            except h11.RemoteProtocolError as exc:
                answer = not_http_answer(self.h11, exc)
                if answer is None:  # a close, not a broken answer
                    raise self._ended(None, sending=False) from exc
                raise Unanswered(*answer, CloseReason.UPSTREAM_RESET) from exc
            except TlsClosed as exc:
                raise self._ended(exc, sending=False) from exc
        if isinstance(got, h11.ConnectionClosed):
            raise self._ended(None, sending=False)
        assert isinstance(got, h11.Event)  # PAUSED only comes after a whole message
        return got

    def next_cycle(self) -> bool:
        """After an answer: ready for the next request, or False when the
        upstream closes after this one."""
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        self.answered += 1
        return True

    def _ended(self, closed: TlsClosed | None, *, sending: bool) -> Exception:
        """What the upstream's close (None: a clean one), failure or stall ends
        the connection with."""
        timed_out = closed is not None and closed.timed_out
        answer = upstream_failure_answer(timed_out=timed_out, sending=sending,
                                         kept_alive=self.answered > 0,
                                         cause=closed.__cause__ if closed else None,
                                         idle_timeout=self.idle_timeout)
        reason = CloseReason.IDLE_TIMEOUT if timed_out else CloseReason.UPSTREAM_RESET
        return End(reason) if answer is None else Unanswered(*answer, reason)
