"""Answers an inspected connection gives itself, in the registry's own error format.

A distribution error body (`{"errors":[{"code":"DENIED","message":...}]}`) is
what skopeo, containerd and docker print, so the worker's operator reads
Portcullis's reason in the client's own error message.
"""

from __future__ import annotations

import json

import h11

from portcullis.basics.vocabulary import Reason
from portcullis.proxy.responses import printable_line

_CODES = {403: "DENIED", 400: "UNSUPPORTED", 502: "UNAVAILABLE"}
_REASONS = {403: "Forbidden", 400: "Bad Request", 502: "Bad Gateway"}


def error_body(status: int, message: str, reason: Reason, rule: str | None) -> bytes:
    text = f"portcullis: {message} (reason: {reason.value}, rule: {rule or '-'})"
    error = {"code": _CODES.get(status, "DENIED"), "message": text,
             "detail": {"reason": reason.value, "rule": rule}}
    return json.dumps({"errors": [error]}, separators=(",", ":")).encode()


def error_events(status: int, message: str, reason: Reason, rule: str | None, *,
                 close: bool) -> list[h11.Response | h11.Data | h11.EndOfMessage]:
    """The h11 events of one error answer; `close` ends the connection after it."""
    body = error_body(status, message, reason, rule)
    headers = [(b"content-type", b"application/json; charset=utf-8"),
               (b"content-length", str(len(body)).encode()),
               (b"docker-distribution-api-version", b"registry/2.0"),
               (b"x-portcullis-reason", reason.value.encode()),
               (b"x-portcullis-rule", (rule or "-").encode("ascii", "replace"))]
    if close:
        headers.append((b"connection", b"close"))
    # The reason phrase carries the message too: a HEAD answer has no body, and
    # containerd prints only the status line of a refused HEAD.
    phrase = f"{_REASONS.get(status, 'Error')} (portcullis: {message})"
    return [h11.Response(status_code=status, headers=headers,
                         reason=printable_line(phrase).encode()),
            h11.Data(data=body), h11.EndOfMessage()]


def raw_error(status: int, message: str, reason: Reason, rule: str | None) -> bytes:
    """The same answer as bytes, for when no request was parsed (a bad head)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    return b"".join(conn.send(e) or b"" for e in error_events(status, message, reason, rule,
                                                               close=True))
