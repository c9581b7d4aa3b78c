"""The request loop of an inspected connection: judge, forward or refuse, audit.

Every request head is read by the strict parser (wire/http1.py, plus
`check_origin_request`: one Host, the connection's own name), then h11, one
request at a time: a pipelined next request waits in the buffer until this one
is answered, and a refusal of a request with a body ends the connection, so no
byte after a refusal is ever read as a request. Each request is classified
(wire/oci.py) and judged (policy/inspection.py); a refusal answers 403 in the
registry's error format and the connection stays usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from typing import NoReturn

import h11

from portcullis.basics.errors import AuthorityError, BadRequest, HttpError
from portcullis.basics.hostport import format_authority
from portcullis.basics.vocabulary import CloseReason, Decision, Reason
from portcullis.observe.audit import AuditEvent
from portcullis.policy.inspection import Inspection, Judgement, judge, request_decision
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.forwarding import (
    allowed_trailers,
    client_request,
    forwardable,
    request_body_answer,
)
from portcullis.proxy.inspected_upstream import End, InspectedUpstream, Unanswered
from portcullis.proxy.registry_answers import error_events, raw_error
from portcullis.proxy.state import FirewallState
from portcullis.proxy.tlsstream import TlsClosed, TlsStream
from portcullis.wire.authority import parse_authority
from portcullis.wire.http1 import RequestHead, check_origin_request, parse_request_head
from portcullis.wire.oci import Endpoint, OciRequest, classify, scopes_of

_HTTP2_PREFACE = b"PRI * HTTP/2.0"
_HTTP1_LINE = re.compile(rb"[A-Z]{1,16} \S+ HTTP/1\.[01]")
_TOKEN_BODY_MAX = 65536
_MANIFEST_MAX = 4 << 20  # the distribution spec's limit; a larger "manifest" is not hashed


class Session:
    """One inspected connection's request loop."""

    def __init__(self, state: FirewallState, attempt: Attempt, rule: Inspection,
                 client: TlsStream, upstream: TlsStream) -> None:
        self.state, self.attempt, self.rule = state, attempt, rule
        self.client = client
        self.limits = state.gate.limits
        self.upstream = InspectedUpstream(upstream, self.limits.idle_timeout)
        self.host = attempt.host or ""
        self.authority = format_authority(self.host, attempt.port, 443)
        self.pending = bytearray()
        self.up = self.down = 0

    async def run(self) -> CloseReason:
        try:
            while True:
                if not await self._next_head():
                    return CloseReason.DONE
                try:
                    client_h11, request = client_request(bytes(self.pending),
                                                         self.limits.header_bytes)
                except h11.RemoteProtocolError as exc:
                    await self._refuse_raw(400, str(exc), Reason.BAD_REQUEST)
                    return CloseReason.BAD_REQUEST
                self.pending.clear()
                if not await self._one(client_h11, request):
                    return CloseReason.DONE
                self.pending += client_h11.trailing_data[0]
        except End as end:
            return end.reason
        except h11.RemoteProtocolError:
            return CloseReason.BAD_REQUEST
        except TlsClosed as exc:
            return CloseReason.IDLE_TIMEOUT if exc.timed_out else CloseReason.CLOSED

    async def _next_head(self) -> bool:
        """Read the next request head into `pending`; False when the connection ends."""
        started = time.monotonic()
        while True:
            if self.pending.startswith(_HTTP2_PREFACE[: len(self.pending)]) and self.pending:
                if len(self.pending) >= len(_HTTP2_PREFACE):
                    await self._refuse_raw(400, "HTTP/2 on an inspected name; use HTTP/1.1",
                                           Reason.NOT_HTTP1)
                    return False
            else:
                try:
                    head = parse_request_head(self.pending, self.limits.header_bytes)
                    if head is not None:
                        self._check_head(head)
                        return True
                except HttpError as exc:
                    line = bytes(self.pending[:200]).split(b"\r\n", 1)[0]
                    if _HTTP1_LINE.fullmatch(line) is None:
                        # Not a request line at all: another protocol on port 443.
                        await self._refuse_raw(400, f"not HTTP/1.1 ({exc.message})",
                                               Reason.NOT_HTTP1)
                    else:
                        await self._refuse_raw(exc.status, exc.message, exc.reason)
                    return False
            left = self.limits.header_timeout - (time.monotonic() - started)
            if left <= 0:
                return False
            data = await self.client.recv(left)
            if not data:
                return False
            self.pending += data

    def _check_head(self, head: RequestHead) -> None:
        host = check_origin_request(head)
        if host is not None:
            try:
                claimed = parse_authority(host, 443, "Host header")
            except AuthorityError as exc:
                raise BadRequest(str(exc)) from None
            if claimed.host != self.host:
                # The upstream would read another name than the one decided on and
                # certified; Host is rewritten anyway, but a mismatch is no client's.
                raise BadRequest(f"Host {host[:80]!r} is not {self.host}, the name of this"
                                 " connection")

    async def _refuse_raw(self, status: int, message: str, reason: Reason) -> None:
        self._audit("-", "-", None, Judgement(False, reason, message), status)
        with contextlib.suppress(TlsClosed):
            await self.client.send(raw_error(status, message, reason, self.attempt.rule))

    async def _one(self, client_h11: h11.Connection, request: h11.Request) -> bool:
        """Judge and serve one request; False when the connection must end."""
        method, target = request.method.decode("ascii"), request.target.decode("ascii")
        try:
            oci = classify(method, target)
        except BadRequest as exc:
            await self._refuse(client_h11, method, target, None,
                               Judgement(False, Reason.BAD_REQUEST, exc.message), 400, True)
            return False
        body: list[h11.Data] = []
        if oci.endpoint is Endpoint.TOKEN and method == "POST":
            try:
                oci, body = await self._token_form(client_h11, oci)
            except Unanswered as failed:
                judgement = Judgement(False, Reason.BAD_REQUEST, failed.message)
                await self._refuse_unanswered(method, target, oci, judgement, failed)
        judgement = judge(self.rule, oci)
        decision = request_decision(judgement, self.state.gate.report_mode)
        if decision is Decision.DENY:
            has_body = client_h11.their_state is h11.SEND_BODY and not body
            if has_body:
                event = client_h11.next_event()
                has_body = not isinstance(event, h11.EndOfMessage)
            await self._refuse(client_h11, method, target, oci, judgement, 403, has_body)
            return not has_body and client_h11.our_state is h11.DONE
        return await self._forward(client_h11, request, oci, judgement, decision, body)

    async def _token_form(self, client_h11: h11.Connection, oci: OciRequest
                          ) -> tuple[OciRequest, list[h11.Data]]:
        """Read a token POST's (small, form-encoded) body for the scopes it asks for."""
        body: list[h11.Data] = []
        size = 0
        while True:
            event = await self._client_body_event(client_h11)
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                body.append(event)
                size += len(event.data)
                if size > _TOKEN_BODY_MAX:
                    raise Unanswered(413, f"a token request's form is over {_TOKEN_BODY_MAX}"
                                      " bytes", CloseReason.BAD_REQUEST)
        form = b"".join(d.data for d in body).decode("ascii", "replace")
        scopes = oci.scopes + scopes_of(form)
        return OciRequest(oci.method, oci.path, oci.endpoint, scopes=scopes), body

    async def _client_event(self, client_h11: h11.Connection) -> object:
        while True:
            event = client_h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.client.recv(self.limits.idle_timeout)
            client_h11.receive_data(data)

    async def _refuse(self, client_h11: h11.Connection, method: str, target: str,
                      oci: OciRequest | None, judgement: Judgement, status: int,
                      close: bool) -> None:
        self._audit(method, target, oci, judgement, status)
        for event in error_events(status, judgement.message, judgement.reason,
                                  self.attempt.rule, close=close):
            await self.client.send(client_h11.send(event) or b"")

    async def _forward(self, client_h11: h11.Connection, request: h11.Request, oci: OciRequest,
                       judgement: Judgement, decision: Decision, body: list[h11.Data]) -> bool:
        path = request.target
        outgoing = h11.Request(method=request.method, target=path,
                               headers=forwardable(request.headers, self.authority))
        try:
            await self.upstream.send(outgoing)
            for event in body:
                await self.upstream.send(event)
                self.up += len(event.data)
            if body:
                await self.upstream.send(h11.EndOfMessage())
            else:
                await self._pump_request_body(client_h11)
            response, served = await self._pump_response(client_h11, oci)
        except Unanswered as failed:
            told = Judgement(judgement.allowed, judgement.reason, failed.message)
            await self._refuse_unanswered(oci.method, oci.path, oci, told, failed,
                                          decision=decision)
        if served is not None or decision is Decision.REPORT:
            self._audit(oci.method, oci.path, oci, judgement, response.status_code,
                        decision=decision, response=response, served=served)
        else:
            self.state.metrics.record_inspected(self.host, decision, judgement.reason)
        if not self.upstream.next_cycle():
            return False  # the upstream closes after this answer, and so does the client
        return client_h11.our_state is h11.DONE and client_h11.their_state is h11.DONE

    async def _refuse_unanswered(self, method: str, path: str, oci: OciRequest | None,
                                 judgement: Judgement, failed: Unanswered, *,
                                 decision: Decision = Decision.DENY) -> NoReturn:
        """Audit the request, tell the client why it failed, and end the connection."""
        self._audit(method, path, oci, judgement, failed.status, decision=decision)
        with contextlib.suppress(TlsClosed):
            await self.client.send(raw_error(failed.status, failed.message, judgement.reason,
                                             self.attempt.rule))
        raise End(failed.reason)

    async def _client_body_event(self, client_h11: h11.Connection) -> object:
        """The next event of a request body the client sends; Unanswered when the
        body breaks its framing, ends early or stalls."""
        try:
            return await self._client_event(client_h11)
        except h11.RemoteProtocolError as exc:
            answer = request_body_answer(exc, self.limits.idle_timeout)
            raise Unanswered(*answer, CloseReason.BAD_REQUEST) from exc
        except TlsClosed as exc:
            if exc.timed_out:
                answer = request_body_answer(None, self.limits.idle_timeout)
                raise Unanswered(*answer, CloseReason.IDLE_TIMEOUT) from exc
            raise

    async def _pump_request_body(self, client_h11: h11.Connection) -> None:
        while True:
            event = await self._client_body_event(client_h11)
            if isinstance(event, h11.Data):
                self.up += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                event = allowed_trailers(event)
            else:
                raise End(CloseReason.CLIENT_GONE)
            await self.upstream.send(event)
            if isinstance(event, h11.EndOfMessage):
                return

    async def _pump_response(self, client_h11: h11.Connection, oci: OciRequest
                             ) -> tuple[h11.Response, bytes | None]:
        """Relay the upstream's answer; the manifest bytes when one was served."""
        manifest: bytearray | None = None
        response: h11.Response | None = None
        while True:
            try:
                got = await self.upstream.next_event()
            except Unanswered:
                if response is None:
                    raise
                raise End(CloseReason.UPSTREAM_RESET) from None  # cut off mid-answer
            event: h11.Event = got
            if isinstance(event, h11.InformationalResponse | h11.Response):
                headers = forwardable(event.headers)
                if isinstance(event, h11.Response):
                    response = event
                    if _says_close(event):
                        headers.append((b"connection", b"close"))
                    if (oci.endpoint is Endpoint.MANIFEST and oci.method == "GET"
                            and event.status_code == 200):
                        manifest = bytearray()
                event = type(event)(status_code=event.status_code, headers=headers,
                                    reason=event.reason)
            elif isinstance(event, h11.Data):
                self.down += len(event.data)
                if manifest is not None:
                    manifest += event.data
                    if len(manifest) > _MANIFEST_MAX:
                        manifest = None
            elif isinstance(event, h11.EndOfMessage):
                event = allowed_trailers(event)
            await self.client.send(client_h11.send(event) or b"")
            if isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(manifest) if manifest is not None else None

    def _audit(self, method: str, path: str, oci: OciRequest | None, judgement: Judgement,
               status: int, *, decision: Decision = Decision.DENY,
               response: h11.Response | None = None, served: bytes | None = None) -> None:
        headers = dict(response.headers) if response is not None else {}
        digest = "sha256:" + hashlib.sha256(served).hexdigest() if served is not None else None
        event = AuditEvent(
            time=time.time(), id=self.attempt.id, client=self.attempt.client,
            registry=self.host, rule=self.attempt.rule, method=method, path=path[:512],
            decision=decision, reason=judgement.reason, status=status,
            repository=oci.repository if oci else None,
            reference=oci.reference if oci else None, digest=digest,
            registry_digest=_header(headers, b"docker-content-digest"),
            media_type=_header(headers, b"content-type"),
            size=len(served) if served is not None else None,
            message=judgement.message or None,
            identity=self.attempt.identity, balancer=self.attempt.balancer,
        )
        self.state.log.audit(event)
        self.state.metrics.record_inspected(self.host, decision, judgement.reason)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("ascii", "replace") if value is not None else None


def _says_close(response: h11.Response) -> bool:
    return any(n == b"connection" and b"close" in v.lower() for n, v in response.headers)
