"""Byte channels to a parent proxy: a plain socket, or TLS driven through
memory BIOs over a plain socket (an https:// parent).

Not asyncio's SSL transports: through uvloop's, a 12 MiB blob from an
https:// parent that closed after it arrived 200 KiB short, every time
(docs/decisions.md). An
`ssl.SSLObject` over `sock_recv`/`sock_sendall` behaves the same on every
loop, and the parent's close_notify is read like any other record.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Protocol

_READ = 65536


class Channel(Protocol):
    # TLS has no half-close: the client's EOF ends the whole tunnel there.
    can_half_close: bool

    async def read(self) -> bytes:
        """The next bytes; b"" at the end of the stream."""
        ...

    async def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...


class SocketChannel:
    can_half_close = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def read(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, _READ)

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class TlsChannel:
    can_half_close = False

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str
                 ) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        # Reads and writes run in two tasks; records must leave in the order made.
        self._sending = asyncio.Lock()

    async def _flush(self) -> None:
        async with self._sending:
            data = self._out.read()
            if data:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, _READ)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def handshake(self) -> None:
        """Raises ssl.SSLError (a certificate not trusted, a bad hostname) or OSError."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def read(self) -> bytes:
        while True:
            try:
                return self._tls.read(_READ)
            except ssl.SSLWantReadError:
                await self._flush()  # a key update may want an answer
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a TCP close without one: the end either way;
                # whatever rides inside (TLS, HTTP framing) tells a truncation.
                return b""

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    def write_eof(self) -> None:
        return None  # no half-close in TLS

    def close(self) -> None:
        self.sock.close()
