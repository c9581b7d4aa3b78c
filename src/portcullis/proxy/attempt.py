"""The facts of one connection (or one request on a kept-alive one), gathered
as it goes through admission and relay, and turned into one decision event and
one close event (observe/events.py). Pure data: recording is FirewallState's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from portcullis.basics.vocabulary import CloseReason, Decision, Mode, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.policy.engine import CompiledRule
from portcullis.proxy.balanced import balancer_of_this_connection

if TYPE_CHECKING:
    from portcullis.policy.limiter import Lease
    from portcullis.proxy.admission import Checked


@dataclass(slots=True)
class Attempt:
    mode: Mode
    client: str
    client_port: int
    id: str
    started: float = field(default_factory=time.monotonic)
    host: str | None = None
    port: int = 0
    is_ip: bool = False
    sni: str | None = None
    decision: Decision = Decision.DENY
    reason: Reason = Reason.BAD_REQUEST
    matched: CompiledRule | None = None  # the deciding rule, None for the default
    resolved: tuple[str, ...] = ()
    # The resolution and each address's check, for `explain` (admission fills it).
    checked: Checked | None = None
    dialed: str | None = None
    dns_ms: float | None = None
    connect_ms: float | None = None
    original_dst: str | None = None
    parent: str | None = None  # the parent proxy's URL (no credentials), when chained
    parent_status: int | None = None  # the parent's answer to CONNECT
    # "ip:port" of the load balancer that sent the PROXY protocol header, if any.
    balancer: str | None = field(default_factory=balancer_of_this_connection)
    logged: bool = False
    # Who the client proved to be (or tried to be, when refused), and the
    # identity of its client certificate (the whole connection's).
    identity: str | None = None
    certified: str | None = None
    # Quota leases held by the connection, shared by its requests (released
    # when the connection ends, by serve_connection).
    leases: list[Lease] = field(default_factory=list)

    @property
    def rule(self) -> str | None:
        return self.matched.name if self.matched is not None else None

    @property
    def allowed(self) -> bool:
        return self.decision is not Decision.DENY

    def next_request(self, id: str) -> Attempt:
        """The attempt for the next request on the same kept-alive connection."""
        return Attempt(self.mode, self.client, self.client_port, id,
                       original_dst=self.original_dst, balancer=self.balancer,
                       certified=self.certified, leases=self.leases)

    def release(self) -> None:
        """Give back the connection's quota tunnels (idempotent)."""
        for lease in self.leases:
            lease.release()

    def decision_event(self) -> DecisionEvent:
        # Positional: keywords would cost a dict per event on the per-connection path.
        return DecisionEvent(
            time.time(), self.id, self.client, self.client_port, self.mode, self.host,
            self.port, self.sni, self.rule, self.decision, self.reason, self.resolved,
            self.dialed, self.dns_ms, self.connect_ms, self.original_dst, self.identity,
            self.parent, self.parent_status, self.balancer,
        )

    def close_event(self, bytes_up: int, bytes_down: int, reason: CloseReason) -> CloseEvent:
        return CloseEvent(time.time(), self.id, self.client, self.host, bytes_up, bytes_down,
                          time.monotonic() - self.started, reason)
