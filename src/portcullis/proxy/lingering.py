"""Closing a refused connection without losing the answer it was just given.

Closing a socket with unread bytes in it (a request the proxy refused before
reading it, at accept; the rest of a head or body after a 4xx) makes the kernel
send RST, and a client that gets the RST before it has read the answer loses
the answer with it: at the connection limit, 1,789 of 1,809 refused clients of
a probe read "connection reset" instead of the `503`. So a refused connection
is closed as nginx's lingering_close does: our side is shut (the client reads
the answer, then EOF), what still comes is read and dropped for up to
LINGER_S seconds or LINGER_BYTES, then the socket is closed. Bounded per event
loop: past MAX_LINGERING at once a refusal closes at once, so a flood of
refusals costs a constant.
"""

from __future__ import annotations

import asyncio
import socket

from portcullis.proxy.per_loop import PerLoop

LINGER_S = 1.0
LINGER_BYTES = 65536
MAX_LINGERING = 256


class _Lingering:
    """The refused sockets of one loop still being drained."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sockets: dict[socket.socket, asyncio.TimerHandle] = {}

    def linger(self, conn: socket.socket) -> None:
        if conn.fileno() < 0:
            return  # closed already
        if len(self.sockets) >= MAX_LINGERING:
            conn.close()
            return
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()  # the client is gone: nothing to keep the answer for
            return
        drained = 0

        def drain() -> None:
            nonlocal drained
            while drained < LINGER_BYTES:
                try:
                    data = conn.recv(LINGER_BYTES)
                except BlockingIOError:
                    return
                except OSError:
                    break
                if not data:
                    break
                drained += len(data)
            self._finish(conn)

        try:
            self.loop.add_reader(conn, drain)
        except (OSError, RuntimeError):  # the loop cannot watch it: close as before
            conn.close()
            return
        self.sockets[conn] = self.loop.call_later(LINGER_S, self._finish, conn)

    def _finish(self, conn: socket.socket) -> None:
        timer = self.sockets.pop(conn, None)
        if timer is None:
            return
        timer.cancel()
        self.loop.remove_reader(conn)
        conn.close()

    def close(self) -> None:
        """The loop is done with (PerLoop): close what still lingers."""
        for conn, timer in self.sockets.items():
            timer.cancel()
            conn.close()
        self.sockets.clear()


_lingering_for: PerLoop[_Lingering] = PerLoop(_Lingering)


def close_refused(conn: socket.socket) -> None:
    """Close a connection the proxy refused (its answer sent), keeping the
    answer from being lost to a reset (the module's docstring)."""
    _lingering_for(asyncio.get_running_loop()).linger(conn)
