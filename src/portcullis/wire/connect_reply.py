"""A parent proxy's answer to `CONNECT host:port`, sans-IO.

Bytes in, a `ConnectReply` out: `None` means "need more bytes",
`ParentAnswerError` (502, reason `parent_failed`) means the parent did not
answer in HTTP/1.x. Only the status line matters to the caller (2xx: the
tunnel is open; anything else: the parent refused); the header fields are
skipped. `length` is the size of the head, so the caller consumes exactly it
and the tunnel's first bytes stay where they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from portcullis.basics.errors import ParentAnswerError

__all__ = ["MAX_REPLY_HEAD", "ConnectReply", "parse_connect_reply"]

MAX_REPLY_HEAD = 16384
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t -~\x80-\xff]*))?")
_PREFIX = b"HTTP/1."


@dataclass(frozen=True, slots=True)
class ConnectReply:
    status: int
    reason: str  # the reason phrase, printable ASCII only
    length: int  # bytes of the head, blank line included

    @property
    def established(self) -> bool:
        return 200 <= self.status < 300


def parse_connect_reply(data: bytes | bytearray) -> ConnectReply | None:
    """The answer head at the start of `data`; None while it may be incomplete."""
    start = bytes(data[: len(_PREFIX)])
    if not _PREFIX.startswith(start):
        raise ParentAnswerError(f"the parent proxy did not answer in HTTP (got {start!r})")
    end = data.find(b"\r\n\r\n", 0, MAX_REPLY_HEAD)
    if end < 0:
        if len(data) >= MAX_REPLY_HEAD:
            raise ParentAnswerError(
                f"the parent proxy's answer head is longer than {MAX_REPLY_HEAD} bytes")
        first = data.find(b"\r\n")
        if first >= 0:
            _status_line(bytes(data[:first]))  # refuse a bad status line early
        return None
    head = bytes(data[:end])
    lines = head.split(b"\r\n")
    status, reason = _status_line(lines[0])
    for line in lines[1:]:
        if b":" not in line or line[:1] in (b" ", b"\t") or b"\n" in line or b"\r" in line:
            raise ParentAnswerError(f"the parent proxy sent a malformed header line {line[:40]!r}")
    return ConnectReply(status, reason, end + 4)


def _status_line(line: bytes) -> tuple[int, str]:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise ParentAnswerError(f"the parent proxy sent a malformed status line {line[:60]!r}")
    phrase = (match.group(2) or b"").decode("latin-1")
    printable = "".join(c if " " <= c <= "~" else "?" for c in phrase)[:100]
    return int(match.group(1)), printable
