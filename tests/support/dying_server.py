"""A TLS blob server to be killed mid-body (tests/e2e/test_faults.py).

    python -m tests.support.dying_server HOST CERT KEY

Prints its port on stdout, then serves each connection in a thread:
`GET /full` sends a 1 MiB body and closes; any other path announces a
100 MiB body and trickles it forever, until the process is killed. It reads one
request head per connection and never reads again, so whatever a client sends
after it stays unread in the kernel: killing the process then resets the
connection (RST) instead of closing it (FIN), as a crashed host would.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time

from tests.support.http import HEAD_END, read_head
from tests.support.servers import ThreadedServer

FULL_SIZE = 1 << 20
ENDLESS_SIZE = 100 << 20
CHUNK = b"x" * 65536


class DyingServer(ThreadedServer):
    def __init__(self, host: str, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(socket.create_server((host, 0)))

    def serve(self, conn: socket.socket) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            head, _ = read_head(tls)
            if not head.endswith(HEAD_END):
                return
            full = head.startswith(b"GET /full ")
            size = FULL_SIZE if full else ENDLESS_SIZE
            tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            sent = 0
            while sent < size:
                tls.sendall(CHUNK)
                sent += len(CHUNK)
                if not full:
                    time.sleep(0.005)


def main() -> None:
    host, cert, key = sys.argv[1:4]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = DyingServer(host, context)
    print(server.port, flush=True)
    threading.Event().wait()  # until the test kills the process


if __name__ == "__main__":
    main()
