"""A plain socket in front of a TLS connection, for TLS inside TLS.

Through an `https://` proxy the registry's TLS runs inside the proxy's TLS.
Python's ssl module cannot wrap an SSLSocket in another one, and the rest of
`check` (the handshake, http.client) wants a real socket; so the tunnel is
handed over as one end of a socketpair, and a thread copies bytes between the
other end and the proxy's TLS connection until either side closes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading

_CHUNK = 65536


def _pump(outer: ssl.SSLSocket, far: socket.socket) -> None:
    try:
        while True:
            # Bytes the TLS layer already decrypted do not make the socket readable.
            ready = [outer] if outer.pending() else select.select([outer, far], [], [])[0]
            for sock in ready:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                (far if sock is outer else outer).sendall(data)
    except (OSError, ValueError):
        return  # either side gone (a reset, a timeout, a closed socket): end the bridge
    finally:
        for sock in (far, outer):
            with contextlib.suppress(OSError):
                sock.close()


def bridge(outer: ssl.SSLSocket) -> socket.socket:
    """A socket whose bytes travel over `outer`; closing it closes `outer` too."""
    near, far = socket.socketpair()
    threading.Thread(target=_pump, args=(outer, far), name="check-tls-bridge",
                     daemon=True).start()
    return near
