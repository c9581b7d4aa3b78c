"""The client side of HTTP/1.1 on raw sockets: reading an answer head, reading to
the close, and asking a proxy for a tunnel (`CONNECT host:port`).

Tests drive the proxy byte by byte on purpose, so these helpers stay on plain
sockets (TLS sockets work too: only `recv` and `sendall` are used).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def read_head(sock: socket.socket, *, exact: bool = False) -> tuple[bytes, bytes]:
    """Read an HTTP head through its blank line: (head, bytes that came after it).

    With `exact`, one byte at a time, so nothing after the head is consumed
    (a tunnel's first TLS bytes stay in the socket for the TLS layer). When the
    peer closes first, the head is what arrived, without a blank line.
    """
    data = b""
    while HEAD_END not in data:
        chunk = sock.recv(1 if exact else 65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, rest = data.partition(HEAD_END)
    return head + HEAD_END, rest


def read_to_close(sock: socket.socket, *, reset_ok: bool = True) -> bytes:
    """Everything the peer sends until it closes; a reset ends it like a close
    unless `reset_ok` is False (then ConnectionResetError propagates)."""
    data = b""
    with contextlib.suppress(*((ConnectionResetError,) if reset_ok else ())):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def drip_until_answered(sock: socket.socket, data: bytes, pause: float, limit: float
                        ) -> float:
    """Send `data` a byte at a time, `pause` s apart, until the peer answers (or
    closes); the seconds that took (`limit` at most). The answer stays unread."""
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(pause)
            with contextlib.suppress(BlockingIOError):
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                break  # an answer, or the end
            if time.monotonic() - started > limit:
                break
    return time.monotonic() - started


@dataclass(frozen=True)
class Answer:
    """An answer head as read by `read_head`, and the bytes that came with it."""

    raw: bytes
    rest: bytes = b""

    @property
    def data(self) -> bytes:
        """Every byte read: the head and what came after it."""
        return self.raw + self.rest

    @property
    def complete(self) -> bool:
        return self.raw.endswith(HEAD_END)

    @property
    def status_line(self) -> bytes:
        return self.raw.split(b"\r\n", 1)[0]

    @property
    def status(self) -> int | None:
        """The status code of an `HTTP/1.1 NNN ...` line, else None."""
        match = _STATUS.match(self.raw)
        return int(match.group(1)) if match else None

    def header(self, name: str) -> str | None:
        """The value of the first header field called `name` (any case), else None."""
        for line in self.raw.split(b"\r\n")[1:]:
            field, colon, value = line.partition(b":")
            if colon and field.decode("latin-1").lower() == name.lower():
                return value.strip().decode("latin-1")
        return None


def dial(address: tuple[str, int], *, source: str | None = None,
         timeout: float = 10.0) -> socket.socket:
    """A TCP connection to `address`, from the loopback address `source` if given."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def send_connect(sock: socket.socket, target: str) -> Answer:
    """Send `CONNECT target` (with its Host field) on an open connection and read
    the answer head exactly, leaving whatever follows it in the socket."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return Answer(*read_head(sock, exact=True))


def connect(address: tuple[str, int], target: str, *, source: str | None = None,
            timeout: float = 10.0) -> tuple[socket.socket, Answer]:
    """Ask the proxy at `address` for a tunnel to `target`: the socket (the
    caller closes it) and the answer head."""
    sock = dial(address, source=source, timeout=timeout)
    try:
        return sock, send_connect(sock, target)
    except BaseException:
        sock.close()
        raise


def ask(address: tuple[str, int], target: str, *, source: str | None = None,
        timeout: float = 10.0, to_close: bool = False) -> Answer:
    """The answer to `CONNECT target`, then the connection is closed. With
    `to_close`, `rest` holds everything after the head until the proxy closes,
    as it must after a refusal (so the test also waits for that close)."""
    sock, answer = connect(address, target, source=source, timeout=timeout)
    with sock:
        if to_close:
            return Answer(answer.raw, answer.rest + read_to_close(sock))
        return answer


def open_tunnel(address: tuple[str, int], target: str, *, timeout: float = 10.0
                ) -> socket.socket:
    """A tunnel to `target` through the proxy at `address`; fails unless the
    proxy answered a whole `200` head. Nothing after the head has been read."""
    sock, answer = connect(address, target, timeout=timeout)
    if not (answer.complete and answer.status == 200):
        sock.close()
        raise AssertionError(f"CONNECT {target} answered {answer.raw!r}")
    return sock


def responses(address: tuple[str, int], raw: bytes, *, answers: int = 1,
              source: str | None = None) -> list[bytes]:
    """Send `raw` on a new connection and read up to `answers` whole responses
    (Content-Length framed; none to a HEAD request), fewer if the peer closes."""
    with dial(address, source=source) as sock:
        sock.sendall(raw)
        out: list[bytes] = []
        buffer = b""
        while len(out) < answers:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            while HEAD_END in buffer:
                head, _, rest = buffer.partition(HEAD_END)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not out and raw.startswith(b"HEAD "):
                    length = 0
                if len(rest) < length:
                    break
                out.append(head + HEAD_END + rest[:length])
                buffer = rest[length:]
        return out


def body_of(answer: bytes) -> dict[str, object]:
    """The JSON body of a whole response (EchoServer's report of what it got)."""
    return json.loads(answer.partition(HEAD_END)[2])  # type: ignore[no-any-return]
