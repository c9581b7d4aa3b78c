"""Small real servers for tests, each on a listener of its own in this process.

`ThreadedServer` is the shape they share: an accept loop in a daemon thread
that counts connections and serves each in a thread of its own, until
`close()`. A server says only what it does with one connection (`serve`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Self

import h11


class ThreadedServer:
    """Accepts on `listener` in a daemon thread; `serve(conn)` runs in a thread
    per connection and `accepted` counts them (read it under `lock`)."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening, at once: closing alone would leave the listener open
        until the blocked accept returns (so the port could not be bound again)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._thread.join(5)
        self.listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Trap(ThreadedServer):
    """A listener that must never be connected to; `accepted` says if it was."""

    def __init__(self, host: str, port: int = 0, *, dual_stack: bool = False) -> None:
        listener = socket.socket(socket.AF_INET6 if dual_stack else socket.AF_INET)
        if dual_stack:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((host, port))
        listener.listen(64)
        super().__init__(listener)

    def serve(self, conn: socket.socket) -> None:
        conn.close()


class EchoServer(ThreadedServer):
    """A real HTTP/1.1 server (h11 on sockets) answering each request with what
    it received, as JSON: method, target, headers, body length and SHA-256, trailers."""

    def __init__(self, host: str, port: int = 0) -> None:
        super().__init__(socket.create_server((host, port)))

    def serve(self, conn: socket.socket) -> None:
        server = h11.Connection(h11.SERVER)
        with conn:
            while True:
                request, body, trailers = None, b"", []
                while True:
                    try:
                        event = server.next_event()
                    except h11.RemoteProtocolError:
                        return  # not HTTP (a test sending TLS or junk): just close
                    if event is h11.NEED_DATA:
                        data = conn.recv(65536)
                        server.receive_data(data)
                        if not data and server.their_state is not h11.DONE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        trailers = [[n.decode(), v.decode()] for n, v in event.headers]
                        break
                    else:
                        return
                assert request is not None
                answer = json.dumps({
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "headers": [[n.decode(), v.decode()] for n, v in request.headers],
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "body_len": len(body),
                    "trailers": trailers,
                }).encode()
                conn.sendall(server.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(answer)))])))
                if request.method != b"HEAD":
                    conn.sendall(server.send(h11.Data(data=answer)))
                conn.sendall(server.send(h11.EndOfMessage()))
                if server.our_state is h11.MUST_CLOSE:
                    return
                server.start_next_cycle()


class ScriptedOrigin(ThreadedServer):
    """An HTTP origin that answers as told, however wrongly: on each connection
    it reads a request head (requests without bodies), writes `replies[0]`,
    reads the next head, writes `replies[1]`, and so on, then closes. Set
    `replies` before the requests it is for."""

    def __init__(self, host: str, port: int = 0, *, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(socket.create_server((host, port)))
        self.replies: list[bytes] = []
        self.tls = tls  # a server context: the origin speaks HTTPS

    def serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        with conn:
            pending = b""
            for reply in list(self.replies):
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                pending = pending.split(b"\r\n\r\n", 1)[1]
                try:
                    conn.sendall(reply)
                except OSError:  # the proxy gave up on the exchange
                    return


@contextlib.contextmanager
def full_listener(host: str, port: int = 0) -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a
    connect to it hangs as behind a dropping firewall. Yields its port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(0)
        # One established connection fills a backlog of 0; nothing accepts it.
        filler = socket.create_connection(listener.getsockname(), timeout=2)
    except BaseException:
        listener.close()
        raise
    try:
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, both non-blocking: the side that
    connected, then the side that was accepted."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b
