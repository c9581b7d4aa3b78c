"""What every connection handler shares: the gate (policy, engine, resolver), the
log and the metrics, and the one way a connection's records are written.

A reload swaps `gate` in one assignment; a handler reads it once per decision.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from portcullis.basics.vocabulary import CloseReason, Decision, Mode, Reason
from portcullis.config import Policy
from portcullis.observe.events import new_connection_id
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.policy.engine import Engine
from portcullis.proxy.admission import refuse
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.gate import Gate
from portcullis.proxy.lingering import close_refused
from portcullis.proxy.relay import relay

# Looked up once: an Enum member in a function goes through EnumType.__getattr__.
_DENY = Decision.DENY


class FirewallState:
    def __init__(self, policy: Policy, log: DecisionLog, metrics: Metrics) -> None:
        self.log = log
        self.metrics = metrics
        self.draining = False
        self.gate = Gate(policy)
        metrics.set_policy_rules(len(self.gate.engine.rules))

    @property
    def policy(self) -> Policy:
        return self.gate.policy

    def install(self, policy: Policy, engine: Engine) -> None:
        """Make a validated, compiled policy current (reload)."""
        self.gate = self.gate.replaced_by(policy, engine)
        self.metrics.set_policy_rules(len(engine.rules))

    def record(self, attempt: Attempt) -> None:
        """Log and count the attempt's decision, once."""
        if attempt.logged:
            return
        attempt.logged = True
        event = attempt.decision_event()
        self.log.decision(event)
        self.metrics.record_decision(event)

    def record_close(
        self, attempt: Attempt, bytes_up: int, bytes_down: int, reason: CloseReason
    ) -> None:
        event = attempt.close_event(bytes_up, bytes_down, reason)
        self.log.close_event(event)
        self.metrics.record_close(event)

    def refuse_and_record(self, attempt: Attempt, reason: Reason) -> None:
        """Record a refusal that ends the connection before anything was relayed."""
        refuse(self.gate, attempt, reason)
        self.record(attempt)

    def abandon(self, attempt: Attempt) -> None:
        """The handler was cancelled (a drain) while deciding: record `draining`,
        once. Before a name is known there is no decision to record, as when
        the client goes away first."""
        if attempt.host is not None and not attempt.logged:
            self.refuse_and_record(attempt, Reason.DRAINING)

    async def relay_tunnel(self, attempt: Attempt, conn: socket.socket,
                           upstream: socket.socket, initial_up: bytes,
                           idle_timeout: float) -> None:
        """Record the decision, relay both ways until the tunnel ends, record the close."""
        self.record(attempt)
        self.metrics.connection_opened(attempt.mode)
        try:
            result = await relay(conn, upstream, initial_up=initial_up,
                                 idle_timeout=idle_timeout)
        finally:
            self.metrics.connection_closed(attempt.mode)
        self.record_close(attempt, result.bytes_up, result.bytes_down, result.close_reason)


ServeFn = Callable[[FirewallState, socket.socket, Attempt], Awaitable[None]]


async def serve_connection(
    state: FirewallState, conn: socket.socket, peer: tuple[str, int], mode: Mode, serve: ServeFn,
    *, certified: str | None = None,
) -> None:
    """Run `serve` on one accepted connection with a fresh Attempt (`certified`: the
    identity of its client certificate).

    Whatever happens `conn` is closed, its quota tunnels are given back, and a
    connection cancelled mid-decision (a drain) still leaves its one decision record.
    """
    attempt = Attempt(mode, peer[0], peer[1], new_connection_id(), certified=certified)
    try:
        await serve(state, conn, attempt)
    except asyncio.CancelledError:
        state.abandon(attempt)
        raise
    finally:
        attempt.release()
        if attempt.decision is _DENY and attempt.logged:
            close_refused(conn)  # so that a reset does not take its answer with it
        else:
            conn.close()
