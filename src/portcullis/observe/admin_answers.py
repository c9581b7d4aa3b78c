"""The admin listener's HTTP answers: plain text or JSON, one per connection."""

from __future__ import annotations

import json
from http import HTTPStatus

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class Response:
    """One answer, closed after it is sent; never cached, never sniffed."""

    __slots__ = ("body", "ctype", "extra", "status")

    def __init__(
        self,
        status: int,
        body: bytes | str,
        ctype: str = TEXT,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.ctype = ctype
        self.extra = extra

    def encode(self) -> bytes:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        head = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.ctype}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
        ]
        head.extend(f"{k}: {v}" for k, v in self.extra)
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def json_answer(status: int, obj: object) -> Response:
    body = json.dumps(obj, ensure_ascii=True, default=str, indent=2) + "\n"
    return Response(status, body, JSON)


def error(status: int, message: str) -> Response:
    return json_answer(status, {"error": message})
