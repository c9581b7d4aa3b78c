"""What every connection handler shares: the current policy, the resolver, logs.

A reload swaps `engine` (and the resolver when its settings changed) in one
assignment; a handler reads `state.engine` once at the start of a decision, so
established tunnels and in-flight decisions keep the policy they started with.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from portcullis.config import IPAddress, Policy, parse_hostport
from portcullis.net.resolver import Resolver
from portcullis.observe.events import CloseEvent, DecisionEvent, Mode, new_connection_id
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.policy.decisions import Decision, Reason
from portcullis.policy.engine import Engine, Verdict


@functools.lru_cache(maxsize=4096)
def client_address(text: str) -> IPAddress:
    """The client's address as an object (zone dropped); parsing it per connection
    showed in profiles, and clients reconnect from the same few addresses."""
    return ipaddress.ip_address(text.partition("%")[0])


def build_resolver(policy: Policy) -> Resolver:
    settings = policy.resolver
    return Resolver(
        servers=settings.servers,
        timeout=settings.timeout,
        hosts={name: [str(a) for a in addrs] for name, addrs in settings.hosts.items()},
        min_ttl=settings.min_ttl,
        max_ttl=settings.max_ttl,
        negative_ttl=settings.negative_ttl,
    )


def listen_addresses(policy: Policy) -> list[IPAddress]:
    """The proxy's own specific listen addresses (wildcards say nothing)."""
    out: list[IPAddress] = []
    for text in (policy.listen.explicit, policy.listen.transparent, policy.listen.admin):
        if text is None:
            continue
        host, _ = parse_hostport(text)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not address.is_unspecified:
            out.append(address)
    return out


class FirewallState:
    def __init__(self, policy: Policy, log: DecisionLog, metrics: Metrics) -> None:
        self.log = log
        self.metrics = metrics
        self.draining = False
        self.policy = policy
        self.engine = Engine(policy)
        self.resolver = build_resolver(policy)
        self.own = frozenset(listen_addresses(policy))
        metrics.set_policy_rules(len(self.engine.rules))

    def install(self, policy: Policy, engine: Engine) -> None:
        """Make a validated, compiled policy current (reload)."""
        if policy.resolver != self.policy.resolver:
            self.resolver = build_resolver(policy)
        self.policy = policy
        self.engine = engine
        self.metrics.set_policy_rules(len(engine.rules))


@dataclass(slots=True)
class Attempt:
    """The facts of one connection, gathered as it goes, logged as one record."""

    state: FirewallState
    mode: Mode
    client: str
    client_port: int
    id: str
    started: float = field(default_factory=time.monotonic)
    host: str | None = None
    port: int = 0
    sni: str | None = None
    decision: Decision = Decision.DENY
    reason: Reason = Reason.BAD_REQUEST
    rule: str | None = None
    resolved: tuple[str, ...] = ()
    dialed: str | None = None
    dns_ms: float | None = None
    connect_ms: float | None = None
    original_dst: str | None = None
    logged: bool = False

    def set_verdict(self, verdict: Verdict) -> None:
        self.decision = verdict.decision
        self.reason = verdict.reason
        self.rule = verdict.rule_name

    def refuse(self, reason: Reason) -> None:
        """A denial that no mode turns into a report (bad input, safety, failure)."""
        self.decision = Decision.DENY
        self.reason = reason

    def abandon(self) -> None:
        """The handler was cancelled (drain) while deciding: record `draining`, once.

        Before a name is known there is no decision to record, as when the
        client goes away first.
        """
        if self.host is not None and not self.logged:
            self.refuse(Reason.DRAINING)
            self.record()

    def record(self) -> None:
        """Log and count the decision, once."""
        if self.logged:
            return
        self.logged = True
        event = DecisionEvent(
            time=time.time(),
            id=self.id,
            client=self.client,
            client_port=self.client_port,
            mode=self.mode,
            host=self.host,
            port=self.port,
            sni=self.sni,
            rule=self.rule,
            decision=self.decision,
            reason=self.reason,
            resolved=self.resolved,
            dialed=self.dialed,
            dns_ms=self.dns_ms,
            connect_ms=self.connect_ms,
            original_dst=self.original_dst,
        )
        self.state.log.decision(event)
        self.state.metrics.record_decision(event)

    def record_close(self, bytes_up: int, bytes_down: int, close_reason: str) -> None:
        event = CloseEvent(
            time=time.time(),
            id=self.id,
            client=self.client,
            host=self.host,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            duration_s=round(time.monotonic() - self.started, 6),
            close_reason=close_reason,
        )
        self.state.log.close_event(event)
        self.state.metrics.record_close(event)


ServeFn = Callable[[FirewallState, socket.socket, Attempt], Awaitable[None]]


async def serve_connection(
    state: FirewallState, conn: socket.socket, peer: tuple[str, int], mode: Mode, serve: ServeFn
) -> None:
    """Run `serve` on one accepted connection with a fresh Attempt.

    Whatever happens `conn` is closed, and a connection cancelled mid-decision
    (a drain) still leaves its one decision record.
    """
    attempt = Attempt(state, mode, peer[0], peer[1], new_connection_id())
    try:
        await serve(state, conn, attempt)
    except asyncio.CancelledError:
        attempt.abandon()
        raise
    finally:
        conn.close()
