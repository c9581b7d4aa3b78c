"""Listeners, the accept loops, reload and drain: the only place that owns sockets
for the life of the process.

- SIGHUP, or a change of the policy file's mtime, reloads: the new file is
  validated and compiled first; a bad file keeps the old policy, is logged and
  counted, and established tunnels never notice either way.
- SIGTERM / SIGINT drain: /readyz fails, listeners close, open connections get
  `drain_timeout` to finish, then are cancelled; exit status 0.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from portcullis.basics.errors import ConfigError, ListenError, PolicyError
from portcullis.basics.hostport import parse_hostport
from portcullis.basics.ip import peer_address
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.config import Policy, load_policy
from portcullis.net.sockets import is_local_address
from portcullis.observe.admin import AdminServer
from portcullis.observe.events import new_connection_id
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.policy.engine import Engine
from portcullis.proxy import transparent
from portcullis.proxy.admission import stranger
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.explaining import explain_for_admin
from portcullis.proxy.explicit import handle_explicit
from portcullis.proxy.inspector import inspector_for
from portcullis.proxy.listeners import bind_or_explain, cannot_listen
from portcullis.proxy.proxied import balancers_for, behind_balancer, refuse_early
from portcullis.proxy.state import FirewallState
from portcullis.proxy.tls_listener import handle_explicit_tls, server_context

Handler = Callable[[FirewallState, socket.socket, tuple[str, int]], Awaitable[None]]
WATCH_INTERVAL = 2.0
# Connections an accept loop starts before it yields to them.
ACCEPT_BATCH = 32



def _accept(listener: socket.socket, family: int) -> tuple[socket.socket, tuple[str, int]]:
    """listener.accept(), without what socket.accept costs on every call: it
    reads the listener's `family` and `type` through properties that build an
    AddressFamily and a SocketKind enum each time (about 10,000 instructions a
    connection, bench/findings.md). The caller makes the socket non-blocking.
    The peer is (address, port), also for IPv6."""
    fd, peer = listener._accept()  # type: ignore[attr-defined]
    return socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd), (peer[0], peer[1])

class Server:
    def __init__(
        self,
        policy: Policy,
        *,
        policy_path: str | None,
        log: DecisionLog,
        reuse_port: bool = False,
        metrics_dir: str | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.metrics = Metrics(shared_dir=metrics_dir)
        self.state = FirewallState(policy, log, self.metrics)
        self.reuse_port = reuse_port
        self.listeners: dict[Mode, socket.socket] = {}
        # PROXY protocol balancers per listener, fixed at start like the listen addresses.
        self.balancers = {mode: b for mode in (Mode.EXPLICIT, Mode.TRANSPARENT)
                          if (b := balancers_for(policy, mode)) is not None}
        self.admin: AdminServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._mtime = self._policy_mtime()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        policy = self.state.policy
        handlers: dict[Mode, Handler] = {
            Mode.EXPLICIT: handle_explicit, Mode.TRANSPARENT: transparent.handle_transparent
        }
        if policy.auth.tls is not None:
            handlers[Mode.EXPLICIT_TLS] = functools.partial(
                handle_explicit_tls, context=server_context(policy.auth.tls))
        for mode, handler in handlers.items():
            address = getattr(policy.listen, mode.value)
            if address is None:
                continue
            sock = bind_or_explain(address, mode, reuse_port=self.reuse_port)
            self.listeners[mode] = sock
            task = asyncio.create_task(self._accept_loop(sock, handler, mode))
            self._accepting.append(task)
        if policy.listen.admin is not None:
            self.admin = AdminServer(
                metrics=self.metrics,
                ready=lambda: not self.state.draining,
                draining=lambda: self.state.draining,
                explain=lambda query: explain_for_admin(self.state.gate, query),
                allowed_clients=policy.admin_allow,
                log=self.state.log,
            )
            host, port = parse_hostport(policy.listen.admin)
            if self.reuse_port:
                admin = bind_or_explain(policy.listen.admin, "admin", reuse_port=True)
                await self.admin.start_socket(admin)
            else:
                try:
                    await self.admin.start(host, port)
                except OSError as exc:
                    raise ListenError(cannot_listen(policy.listen.admin, "admin", exc)) from None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_drain)
        if self.policy_path is not None:
            self._accepting.append(asyncio.create_task(self._watch_policy()))

    def bound(self, mode: str) -> tuple[str, int]:
        name = self.listeners[Mode(mode)].getsockname()
        return str(name[0]), int(name[1])

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def begin_drain(self) -> None:
        if self.state.draining:
            return
        self.state.draining = True
        self.state.log.log_info("draining", open_connections=len(self._tasks))
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        for task in self._accepting:
            task.cancel()
        # The accept loops unregister their listener on the way out: let them,
        # before the fds are closed and their numbers can be reused.
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self.listeners.values():
            sock.close()
        timeout = self.state.gate.limits.drain_timeout
        if self._tasks:
            # drain_timeout 0 cancels open connections at once.
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.admin is not None:
            await self.admin.close()
        self.metrics.flush()  # the last batch, into the files the other workers' scrapes read
        self.state.log.log_info("stopped")
        self._stopped.set()

    # -- accepting --------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket, handler: Handler, mode: Mode) -> None:
        # One reader registration for the listener's whole life, and plain
        # accept() calls until the backlog is empty: loop.sock_accept would
        # register and unregister the listener (four to eight syscalls under
        # uvloop) for every connection (bench/findings.md).
        loop = asyncio.get_running_loop()
        fd = listener.fileno()
        family = listener.family
        waiter: asyncio.Future[None] | None = None

        def readable() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        failing: float | None = None  # when accept() started failing
        loop.add_reader(fd, readable)
        try:
            accepted = 0
            while True:
                try:
                    conn, peer = _accept(listener, family)
                except (BlockingIOError, InterruptedError):
                    waiter = loop.create_future()
                    await waiter
                    accepted = 0
                    continue
                except ConnectionAbortedError:
                    continue  # the client gave up while queued: nothing to back off from
                except OSError as exc:
                    # EMFILE/ENFILE: out of descriptors. Back off instead of
                    # spinning (the reader would fire on every turn meanwhile);
                    # the clients still queued are served when fds free up.
                    # Logged once per episode, not once per back-off.
                    if failing is None:
                        self.state.log.log_error("accept failed", error=str(exc), mode=mode)
                        failing = time.monotonic()
                    loop.remove_reader(fd)
                    await asyncio.sleep(0.1)
                    loop.add_reader(fd, readable)
                    continue
                if failing is not None:
                    self.state.log.log_info(
                        "accepting again", mode=mode, after_s=round(time.monotonic() - failing, 3)
                    )
                    failing = None
                self._start(loop, conn, peer, handler, mode)
                accepted += 1
                if accepted >= ACCEPT_BATCH:
                    accepted = 0
                    await asyncio.sleep(0)  # let the connections just started run
        finally:
            loop.remove_reader(fd)

    def _start(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, peer: tuple[str, int],
               handler: Handler, mode: Mode) -> None:
        conn.setblocking(False)
        client = peer_address(peer[0])
        balancers = self.balancers.get(mode)
        if balancers is not None and balancers.trusts(client):
            # The real client is known only after the header: the stranger check waits for it.
            handler = behind_balancer(handler, mode)
        elif balancers is not None and balancers.required:
            self._refuse_at_accept(conn, peer, mode, Reason.BALANCER_UNKNOWN, 403,
                                   "this listener takes connections from its load balancers only")
            return
        elif stranger(self.state.gate, peer[0]) and not (
            # A redirected connection from this very host may be our own upstream
            # looping back: the handler tells, once its SNI is read.
            mode is Mode.TRANSPARENT and is_local_address(client)
        ):
            # Before the capacity check: strangers never take a worker's slot.
            self._refuse_at_accept(conn, peer, mode, Reason.SOURCE_UNKNOWN, 403,
                                   "this client is in no source group")
            return
        # The current policy's limit: a reload may change it.
        if len(self._tasks) >= self.state.gate.limits.max_connections or self.state.draining:
            reason = Reason.DRAINING if self.state.draining else Reason.OVER_CAPACITY
            self._refuse_at_accept(conn, peer, mode, reason, 503,
                                   "the proxy is at its connection limit")
            return
        task = loop.create_task(self._guard(handler, conn, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, handler: Handler, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            await handler(self.state, conn, peer)
        except asyncio.CancelledError:
            conn.close()
        except Exception as exc:  # a bug must cost one connection, never the listener
            conn.close()
            self.state.log.log_error("handler failed", error=repr(exc), client=peer[0])

    def _refuse_at_accept(self, conn: socket.socket, peer: tuple[str, int], mode: Mode,
                          reason: Reason, status: int, detail: str) -> None:
        """Record and answer without starting a task: no slot, no read."""
        attempt = Attempt(mode, peer[0], peer[1], new_connection_id())
        refuse_early(self.state, conn, attempt, reason, status, detail)

    # -- reloading ----------------------------------------------------------------

    def _policy_mtime(self) -> float | None:
        if self.policy_path is None:
            return None
        try:
            return os.stat(self.policy_path).st_mtime
        except OSError:
            return None

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            mtime = self._policy_mtime()
            if mtime is not None and mtime != self._mtime:
                self.reload()

    def reload(self) -> bool:
        """Validate, compile and install the policy file; keep the old one on error."""
        self._mtime = self._policy_mtime()
        log = self.state.log
        try:
            policy = load_policy(Path(self.policy_path) if self.policy_path else None)
            engine = Engine(policy)
            if policy.tls_inspection is not None:
                inspector_for(policy.tls_inspection)  # a bad CA key keeps the old policy
        except PolicyError as exc:
            self.metrics.reload(False)
            log.log_error("reload rejected; the previous policy stays", problems=exc.problems)
            return False
        except Exception as exc:  # compile bugs must not take the old policy down
            self.metrics.reload(False)
            log.log_error("reload failed; the previous policy stays", error=repr(exc))
            return False
        if policy.listen != self.state.policy.listen:
            log.log_info("listen addresses changed; they apply after a restart")
        try:
            self.state.install(policy, engine)
        except ConfigError as exc:  # a password file that cannot be read
            self.metrics.reload(False)
            log.log_error("reload rejected; the previous policy stays", problems=[str(exc)])
            return False
        self.metrics.reload(True)
        log.reopen()
        log.log_info("policy reloaded", rules=len(engine.rules))
        return True

