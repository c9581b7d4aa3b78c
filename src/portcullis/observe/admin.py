"""The admin listener: /healthz, /readyz, /metrics and /explain over HTTP/1.1.

One request per connection, answered and closed: the callers are probes and
Prometheus, for which keep-alive buys nothing and costs state. h11 parses the
request head strictly; a whole-head deadline (not a per-read one) stops a client
that trickles bytes from holding a slot.

The client check is by source address and happens even when the listener is
bound to 0.0.0.0: /explain reveals policy and resolution details that a worker
node (the very thing being fenced in) has no business reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import ip_address, ip_network
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from portcullis.basics.errors import BadParameter
from portcullis.basics.ip import IPAddress, IPNetwork, peer_address
from portcullis.observe.admin_answers import Response, error, json_answer
from portcullis.observe.explain_query import ExplainQuery, parse_explain_query, query_error
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics

ExplainResult = tuple[int, dict[str, object]]
# The checked query: the status and JSON body to answer.
Explain = Callable[[ExplainQuery], ExplainResult | Awaitable[ExplainResult]]

LOOPBACK: tuple[IPNetwork, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))

_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/explain"})
# After answering, unread request bytes are drained for a moment: closing a
# socket with unread data makes the kernel send RST, which can destroy the
# response before the client has read it.
_LINGER_S = 1.0
_LINGER_BYTES = 64 * 1024
_AT_CAPACITY = Response(503, "too many admin connections\n", extra=(("Retry-After", "1"),))


def client_address(peername: Any) -> IPAddress | None:
    """The client's IP from a peername, with IPv4-mapped IPv6 unwrapped.

    A dual-stack listener reports 127.0.0.1 as ::ffff:127.0.0.1, which is not
    in 127.0.0.0/8 as far as ipaddress is concerned.
    """
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None  # AF_UNIX or unknown: no address to admit
    try:
        return peer_address(peername[0])
    except ValueError:
        return None


class AdminServer:
    def __init__(
        self,
        *,
        metrics: Metrics,
        ready: Callable[[], bool],
        explain: Explain,
        allowed_clients: Sequence[IPNetwork] = LOOPBACK,
        draining: Callable[[], bool] | None = None,
        log: DecisionLog | None = None,
        head_timeout: float = 5.0,
        explain_timeout: float = 10.0,
        max_head: int = 8192,
        max_connections: int = 32,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._draining = draining
        self._explain = explain
        self._allowed = tuple(allowed_clients)
        self._log = log
        self._head_timeout = head_timeout
        self._explain_timeout = explain_timeout
        self._max_head = max_head
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lingering = 0  # turned-away clients being given their answer

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    async def start_socket(self, sock: socket.socket) -> None:
        """Serve on an already bound socket (socket activation, dual-stack tests)."""
        self._server = await asyncio.start_server(self._handle, sock=sock)

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("admin server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def _is_allowed(self, peername: Any) -> bool:
        addr = client_address(peername)
        if addr is None:
            return False
        # Also test the address as the socket saw it, so that a network written
        # as ::ffff:10.0.0.0/104 still matches what it plainly means.
        seen = ip_address(peername[0].split("%", 1)[0])
        return any(addr in net or seen in net for net in self._allowed)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        if not self._is_allowed(peername):
            # Decided at accept, before a slot is taken: clients outside
            # admin_allow can never starve the probes of those inside it.
            # An audit trail: a refused admin client is someone probing the firewall.
            await self._turn_away(
                reader, writer, Response(403, "forbidden\n"), "admin client refused", peername
            )
            return
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= self._max_connections:
            # Said and logged, not a bare close: a probe that finds every slot
            # taken would otherwise read a reset as a dead firewall.
            await self._turn_away(
                reader,
                writer,
                _AT_CAPACITY,
                "admin connection refused: at capacity",
                peername,
                max_connections=self._max_connections,
            )
            return
        self._tasks.add(task)
        try:
            try:
                response = await self._serve(reader, writer.get_extra_info("peername"))
            except (ConnectionError, OSError):
                raise
            except Exception as exc:  # a bug in a route must not kill the listener
                self._report("admin request failed", exc)
                response = Response(500, "internal error\n")
            if response is not None:
                writer.write(response.encode())
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                await self._linger(reader)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            # Only close() cancels these top-level tasks. Ending normally keeps
            # Python 3.11's stream callback from logging the cancellation as an
            # unhandled error (it calls task.exception() on a cancelled task).
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _turn_away(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: Response,
        message: str,
        peername: Any,
        **fields: object,
    ) -> None:
        """Answer `response` without taking a slot, log `message`, and close."""
        if self._log is not None:
            client = client_address(peername)
            self._log.log_info(
                message, client=str(client) if client is not None else repr(peername), **fields
            )
        try:
            writer.write(response.encode())
            if writer.can_write_eof():
                writer.write_eof()
            # A short linger so the request the client already sent does not turn
            # the close into a reset that loses the answer; bounded in count too,
            # so a flood costs a constant.
            if self._lingering < self._max_connections:
                self._lingering += 1
                try:
                    await self._linger(reader)
                finally:
                    self._lingering -= 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader) -> None:
        drained = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_S):
                while drained < _LINGER_BYTES:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    drained += len(chunk)

    async def _read_head(self, reader: asyncio.StreamReader) -> h11.Request | Response | None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        try:
            async with asyncio.timeout(self._head_timeout):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(4096))
                        continue
                    if isinstance(event, h11.Request):
                        return event
                    return None  # closed before sending anything
        except TimeoutError:
            return Response(408, "request head timeout\n")
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                return Response(431, "request header fields too large\n")
            return Response(400, "bad request\n")

    async def _serve(self, reader: asyncio.StreamReader, peername: Any) -> Response | None:
        head = await self._read_head(reader)
        if not isinstance(head, h11.Request):
            return head
        try:
            parts = urlsplit(head.target.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return Response(400, "bad request target\n")
        if parts.path not in _ROUTES:
            return Response(404, "not found\n")
        if head.method != b"GET":
            return Response(405, "method not allowed\n", extra=(("Allow", "GET"),))
        if parts.path == "/healthz":
            return Response(200, "ok\n")
        if parts.path == "/readyz":
            return self._readyz()
        if parts.path == "/metrics":
            body, ctype = self._metrics.render()
            return Response(200, body, ctype)
        return await self._explain_route(parts.query)

    def _readyz(self) -> Response:
        try:
            if self._ready():
                return Response(200, "ready\n")
            draining = self._draining is not None and self._draining()
        except Exception as exc:
            self._report("readiness check failed", exc)
            return Response(503, "not ready\n")
        return Response(503, "draining\n" if draining else "not ready\n")

    async def _explain_route(self, text: str) -> Response:
        try:
            params = parse_qs(text, keep_blank_values=True, max_num_fields=8)
        except ValueError:
            return error(400, "too many query parameters")
        try:
            query = parse_explain_query(params)
        except BadParameter as exc:
            return error(400, query_error(exc))
        try:
            result = self._explain(query)
            if inspect.isawaitable(result):
                async with asyncio.timeout(self._explain_timeout):
                    result = await result
            status, payload = result
        except TimeoutError:
            return error(504, "explain timed out")
        except Exception as exc:
            self._report("explain failed", exc)
            return error(500, "explain failed")
        if not isinstance(status, int) or not 200 <= status <= 599:
            self._report("explain returned a bad status", ValueError(repr(status)))
            return error(500, "explain failed")
        return json_answer(status, payload)

    def _report(self, message: str, exc: BaseException) -> None:
        if self._log is not None:
            self._log.log_error(message, error=f"{type(exc).__name__}: {exc}")
