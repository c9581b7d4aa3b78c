"""Listening sockets: bound once at start, and a clear error naming the address
and the reason when one cannot be bound."""

from __future__ import annotations

import socket

from portcullis.basics.errors import ListenError
from portcullis.basics.hostport import parse_hostport


def bind_listener(address: str, *, reuse_port: bool = False) -> socket.socket:
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6 and host in ("::", ""):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def cannot_listen(address: str, mode: str, exc: OSError) -> str:
    return f"cannot listen on {address} ({mode}): {exc.strerror or exc}"


def bind_or_explain(address: str, mode: str, *, reuse_port: bool) -> socket.socket:
    try:
        return bind_listener(address, reuse_port=reuse_port)
    except OSError as exc:
        raise ListenError(cannot_listen(address, mode, exc)) from None
