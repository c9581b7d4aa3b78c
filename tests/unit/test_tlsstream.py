"""proxy/tlsstream.py over real loopback sockets: a peer that takes nothing."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from tests.support.servers import tcp_pair

from portcullis.proxy.tlsstream import TlsClosed, TlsStream


def test_a_peer_that_stops_reading_ends_the_stream_at_the_send_timeout() -> None:
    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("us.icr.io").configure_cert(server_context)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    authority.configure_trust(client_context)

    async def main() -> None:
        ours, theirs = tcp_pair()
        with ours, theirs:
            peer = TlsStream(theirs, client_context, server_side=False,
                             server_hostname="us.icr.io")
            stream = TlsStream(ours, server_context, server_side=True, send_timeout=0.3)
            await asyncio.gather(stream.handshake(5), peer.handshake(5))
            # The peer reads nothing more: its window and our buffer fill up.
            with pytest.raises(TlsClosed) as failed:
                async with asyncio.timeout(5):  # before, this send never ended
                    for _ in range(400):
                        await stream.send(b"x" * 262_144)
            assert isinstance(failed.value.__cause__, TimeoutError)

    asyncio.run(main())
