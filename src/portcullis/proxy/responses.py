"""The short HTTP answers the proxy gives when a request ends at the proxy.

The body names the decision, the reason and the rule, so an operator reading a
client's error (skopeo prints the body) knows what to change; the same facts
are in `X-Portcullis-Reason` / `X-Portcullis-Rule` for tools such as `check`.
"""

from __future__ import annotations

from portcullis.basics.hostport import format_hostport
from portcullis.proxy.attempt import Attempt

ERROR_STATUS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def printable_line(text: str) -> str:
    # Client-supplied names end up here: keep the head one line of printable ASCII.
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:300]


def error_response(status: int, attempt: Attempt, detail: str | None = None, *,
                   realm: str = "portcullis") -> bytes:
    target = format_hostport(attempt.host, attempt.port) if attempt.host else "the request"
    rule = attempt.rule or "-"
    lines = [
        f"portcullis: {attempt.decision.value} {target}"
        f" (reason: {attempt.reason.value}, rule: {rule})"
    ]
    if detail:
        lines.append(detail)
    body = "".join(printable_line(line) + "\n" for line in lines).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {ERROR_STATUS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Portcullis-Reason: {attempt.reason.value}\r\n"
        f"X-Portcullis-Rule: {printable_line(rule)}\r\n"
        # 407 must name the scheme (RFC 9110 §11.7.1); clients retry with credentials.
        + (f'Proxy-Authenticate: Basic realm="{realm}"\r\n' if status == 407 else "")
        + ("Retry-After: 1\r\n" if status == 429 else "")
        + "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
