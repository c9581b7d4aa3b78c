"""A tiny real authoritative DNS server for tests, on loopback.

It answers A, AAAA and CNAME queries from a dict of records over UDP and TCP
(same ephemeral port, so a resolver's truncation fallback works), follows
in-zone CNAME chains inside one answer like a real authoritative server, and can
be told to answer NXDOMAIN, SERVFAIL or REFUSED, or to stay silent, for one name
or for all. It counts the queries it receives.

    with DnsServer({"reg.test": [Record("A", "127.0.0.2", ttl=60)]}) as dns:
        resolver = Resolver(servers=[dns.server])
        ...
        assert dns.queries == 2

The server runs its own asyncio loop in a daemon thread, so it serves both
synchronous code and tests that run their own loop with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from types import TracebackType
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Failure = Literal["nxdomain", "servfail", "refused", "silent"]
_RCODES = {"nxdomain": dns.rcode.NXDOMAIN, "servfail": dns.rcode.SERVFAIL,
           "refused": dns.rcode.REFUSED}  # fmt: skip
_MAX_CHAIN = 16


@dataclass(frozen=True, slots=True)
class Record:
    rtype: str  # "A", "AAAA" or "CNAME"
    value: str
    ttl: int = 300


def _key(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


class DnsServer:
    def __init__(
        self,
        records: Mapping[str, Iterable[Record]] | None = None,
        *,
        host: str = "127.0.0.1",
        tcp: bool = True,
    ) -> None:
        self._host = host
        self._tcp = tcp
        self._lock = threading.Lock()
        self._records: dict[str, list[Record]] = {}
        self._failures: dict[tuple[str | None, str | None], Failure] = {}
        self._query_log: list[tuple[str, str, str]] = []
        self.delay = 0.0  # seconds before each answer, to hold queries in flight
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[asyncio.BaseTransport | asyncio.Server] = []
        if records:
            self.set_records(records)

    # --- configuration (callable from any thread) ------------------------------

    def set_records(self, records: Mapping[str, Iterable[Record]]) -> None:
        """Replace every record."""
        table = {_key(name): list(rrs) for name, rrs in records.items()}
        for rrs in table.values():
            for rr in rrs:
                if rr.rtype not in ("A", "AAAA", "CNAME"):
                    raise ValueError(f"unsupported record type {rr.rtype!r}")
        with self._lock:
            self._records = table

    def add(self, name: str, rtype: str, value: str, ttl: int = 300) -> None:
        with self._lock:
            self._records.setdefault(_key(name), []).append(Record(rtype, value, ttl))

    def fail(self, name: str | None, kind: Failure, rtype: str | None = None) -> None:
        """Answer `kind` for `name` (None: every name), for queries of `rtype`
        (None: every type), until cleared."""
        with self._lock:
            self._failures[(None if name is None else _key(name), rtype)] = kind

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    @property
    def queries(self) -> int:
        with self._lock:
            return len(self._query_log)

    @property
    def query_log(self) -> list[tuple[str, str, str]]:
        """(name, type, "udp" | "tcp") per query received, oldest first."""
        with self._lock:
            return list(self._query_log)

    def reset_queries(self) -> None:
        with self._lock:
            self._query_log.clear()

    @property
    def address(self) -> tuple[str, int]:
        if not self._port:
            raise RuntimeError("DnsServer is not started")
        return self._host, self._port

    @property
    def server(self) -> str:
        """The address as a resolver server string: "ip:port" or "[v6]:port"."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> DnsServer:
        udp, tcp = self._bind()
        self._port = udp.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def setup() -> None:
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
            self._closers.append(transport)
            if tcp is not None:
                self._closers.append(await asyncio.start_server(self._serve_tcp, sock=tcp))

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(setup())
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="dnsserver", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("DnsServer did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            for closer in self._closers:
                closer.close()
            # Open TCP connections still have handler tasks; end them cleanly.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = None
        self._closers = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket | None]:
        family = socket.AF_INET6 if ip_address(self._host).version == 6 else socket.AF_INET
        # TCP must share the UDP port number (clients retry truncated answers on
        # the same port); another process may own it, so try a few.
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self._host, 0))
            if not self._tcp:
                return udp, None
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self._host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    # --- answering ---------------------------------------------------------------

    def _note(self, query: dns.message.Message, transport: str) -> Failure | None:
        q = query.question[0] if query.question else None
        name = _key(q.name.to_text()) if q is not None else ""
        rtype = dns.rdatatype.to_text(q.rdtype) if q is not None else ""
        with self._lock:
            self._query_log.append((name, rtype, transport))
            for key in ((name, rtype), (name, None), (None, rtype), (None, None)):
                if key in self._failures:
                    return self._failures[key]
            return None

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The response bytes to `wire`, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        failure = self._note(query, transport)
        if failure == "silent":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if failure is not None:
            response.set_rcode(_RCODES[failure])
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._fill(response, query.question[0].name, query.question[0].rdtype)
        if transport == "tcp":
            return response.to_wire(max_size=65535)  # not the client's UDP payload
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        with self._lock:
            records = self._records
        wanted_type = dns.rdatatype.to_text(qtype)
        name = qname
        for _ in range(_MAX_CHAIN):
            rrs = records.get(_key(name.to_text()))
            if rrs is None:
                # Like a real authority: the chain so far, and NXDOMAIN for its end.
                response.set_rcode(dns.rcode.NXDOMAIN)
                return
            cname = next((r for r in rrs if r.rtype == "CNAME"), None)
            if cname is None or wanted_type == "CNAME":
                wanted = [r for r in rrs if r.rtype == wanted_type]
                if wanted:
                    ttl = min(r.ttl for r in wanted)
                    values = [r.value for r in wanted]
                    response.answer.append(
                        dns.rrset.from_text_list(name, ttl, "IN", wanted_type, values)
                    )
                return
            target = dns.name.from_text(cname.value)
            response.answer.append(
                dns.rrset.from_text(name, cname.ttl, "IN", "CNAME", target.to_text())
            )
            name = target
        response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop or an absurd chain

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = await reader.readexactly(length)
                out = self.answer(wire, "tcp")
                if out is None:
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        out = self._server.answer(data, "udp")
        if out is None or self._transport is None:
            return
        if self._server.delay:
            asyncio.get_running_loop().call_later(
                self._server.delay, self._transport.sendto, out, addr
            )
        else:
            self._transport.sendto(out, addr)
