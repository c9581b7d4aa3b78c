"""Reading a PROXY protocol header off a real socket (proxy/proxied.py
`read_proxy_header`): however the balancer's bytes are split, exactly the
header is consumed and the client's bytes stay for the listener's handler;
silence is a timeout, a close is ClientGone, junk is refused at once."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from portcullis.basics.errors import ProxyHeaderError
from portcullis.proxy.proxied import read_proxy_header
from portcullis.proxy.reading import ClientGone

V1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 3128\r\n"
V2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 10, 0, 0, 1])
      + (51234).to_bytes(2, "big") + (3128).to_bytes(2, "big"))
CLIENT = b"CONNECT us.icr.io:443 HTTP/1.1\r\n\r\n"


def run(chunks: list[bytes], *, timeout: float = 2, close: bool = False
        ) -> tuple[object, bytes]:
    """Send `chunks` 10 ms apart on one end of a pair, read the header on the
    other: (header or the exception, what the handler would read next)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)

    async def go() -> tuple[object, bytes]:
        loop = asyncio.get_running_loop()

        def feed() -> None:
            for chunk in chunks:
                theirs.sendall(chunk)
                time.sleep(0.01)
            if close:
                theirs.close()

        feeder = loop.run_in_executor(None, feed)
        try:
            result: object = await read_proxy_header(ours, timeout)
        except (TimeoutError, ClientGone, ProxyHeaderError) as exc:
            result = exc
        await feeder
        rest = b""
        if not close:
            theirs.shutdown(socket.SHUT_WR)
            while data := await loop.sock_recv(ours, 4096):
                rest += data
        return result, rest

    try:
        return asyncio.run(go())
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_the_header_alone_is_taken_however_it_is_split(header: bytes) -> None:
    for chunks in ([header + CLIENT], [header[:5], header[5:20], header[20:] + CLIENT],
                   [bytes([b]) for b in header] + [CLIENT]):
        result, rest = run(chunks, timeout=5)  # one deadline for the whole header
        assert getattr(result, "length", None) == len(header), chunks
        assert rest == CLIENT


def test_silence_is_a_timeout_and_a_close_is_client_gone() -> None:
    started = time.monotonic()
    result, _ = run([V1[:10]], timeout=0.3)
    assert isinstance(result, TimeoutError) and time.monotonic() - started < 1.5
    result, _ = run([V2[:7]], close=True)
    assert isinstance(result, ClientGone)


def test_junk_is_refused_without_waiting() -> None:
    started = time.monotonic()
    result, _ = run([CLIENT], timeout=5)
    assert isinstance(result, ProxyHeaderError) and time.monotonic() - started < 1
