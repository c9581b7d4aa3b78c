"""The Python floor: the least a CONNECT relay on uvloop can do, for bench/run.py
to compare Portcullis against. No policy, no logging, no timeouts; the name comes
from a table given on the command line.

    python -m bench.floor_relay --listen 127.0.0.1:PORT --host bench.icr.io=127.0.0.2

Stdlib and uvloop only: it imports nothing from portcullis (nor from tests).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

MAX_HEAD = 8192


class Side(asyncio.Protocol):
    """One socket of a tunnel: what it reads is written to the other socket."""

    transport: asyncio.Transport
    peer: Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)

    # Our write buffer is full: stop reading what fills it, the peer's socket.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()

    # EOF closes this socket (Protocol.eof_received returns None), and either
    # socket's end closes the other; close() sends what is still buffered first.
    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()


class Client(Side):
    """The client's socket: reads `CONNECT host:port`, dials, then relays."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self.dial())
        elif len(self.head) > MAX_HEAD:
            self.transport.close()

    async def dial(self) -> None:
        head, _, rest = self.head.partition(b"\r\n\r\n")
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            host, _, port = target.rpartition(":")
            if method != "CONNECT":
                raise ValueError(method)
            upstream = Side()
            upstream.peer = self
            await asyncio.get_running_loop().create_connection(
                lambda: upstream, self.hosts[host], int(port))
        except (OSError, ValueError, KeyError):
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        if self.transport.is_closing():
            upstream.transport.close()
            return
        self.peer = upstream
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.transport.write(rest)
        self.transport.resume_reading()


async def serve(listen: str, hosts: dict[str, str]) -> None:
    host, _, port = listen.rpartition(":")
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(hosts), host.strip("[]"), int(port), backlog=4096)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--host", action="append", default=[], help="name=address")
    args = parser.parse_args()
    hosts = dict(pair.split("=", 1) for pair in args.host)
    uvloop.run(serve(args.listen, hosts))


if __name__ == "__main__":
    main()
