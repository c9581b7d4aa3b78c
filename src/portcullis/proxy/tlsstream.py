"""TLS over a non-blocking socket with `ssl.SSLObject` and memory BIOs.

The inspection path has already read the client's ClientHello off the socket
to decide on it; a memory BIO lets those bytes be fed to OpenSSL first, which
`loop.start_tls` cannot do. Encryption runs in OpenSSL; this only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

_READ = 65536
# Plaintext handed on per call: several TLS records (16 KiB each) at once, so
# the HTTP layer above runs once per batch, not once per record (bench/RESULTS.md).
_BATCH = 262144


class TlsClosed(Exception):
    """The peer closed or reset the connection (or went quiet past the timeout)."""

    @property
    def timed_out(self) -> bool:
        """Ended by a timeout (the peer sent, or took, nothing for that long)."""
        return isinstance(self.__cause__, TimeoutError)


class TlsStream:
    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None, initial: bytes = b"",
                 send_timeout: float | None = None) -> None:
        self.sock = sock
        # A peer that takes nothing of what is sent for this long is gone
        # (TlsClosed, caused by TimeoutError), as one that sends nothing is.
        self.send_timeout = send_timeout
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if initial:
            self._in.write(initial)
        self.tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                    server_hostname=server_hostname)
        self._loop = asyncio.get_running_loop()

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self._loop.sock_sendall(self.sock, data)
            except (OSError, TimeoutError) as exc:
                raise TlsClosed from exc

    async def _fill(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                data = await self._loop.sock_recv(self.sock, _BATCH)
        except (OSError, TimeoutError) as exc:
            raise TlsClosed from exc
        if not data:
            self._in.write_eof()
        else:
            self._in.write(data)

    async def handshake(self, timeout: float) -> None:
        """Complete the handshake; ssl.SSLError for what the peer or OpenSSL refused."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    await self._fill(timeout)
                except ssl.SSLError:
                    # Send our alert (say unknown_ca) before giving up.
                    with contextlib.suppress(TlsClosed):
                        await self._flush()
                    raise
            await self._flush()

    async def recv(self, timeout: float) -> bytes:
        """Plaintext, b"" at a clean close; TlsClosed for a reset, a timeout or an abrupt end."""
        while True:
            try:
                data = self.tls.read(_READ)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill(timeout)
                continue
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise TlsClosed from exc
            return self._more(data) if data else data

    def _more(self, first: bytes) -> bytes:
        """`first` and whatever else decrypts from bytes already received."""
        parts, size = [first], len(first)
        while size < _BATCH and (self._in.pending or self.tls.pending()):
            try:
                more = self.tls.read(_READ)
            except ssl.SSLError:
                break  # want-read, a close or an error: the next recv() sees it
            if not more:
                break
            parts.append(more)
            size += len(more)
        return first if len(parts) == 1 else b"".join(parts)

    async def send(self, data: bytes) -> None:
        if data:
            try:
                self.tls.write(data)
            except ssl.SSLError as exc:
                raise TlsClosed from exc
            await self._flush()

    async def close(self) -> None:
        """Send close_notify (best effort) and close the socket."""
        with contextlib.suppress(ssl.SSLError, TlsClosed, OSError):
            self.tls.unwrap()
        with contextlib.suppress(TlsClosed):
            await self._flush()
        self.sock.close()
