"""What a load balancer's PROXY protocol header said about the connection being
served: who sent the header and where the client was going.

A context variable, set by proxy/proxied.py in the connection's own task
before the listener's handler runs: the handlers, `serve_connection` and
`Attempt` keep their signatures whether or not a balancer is in front, and
the facts cannot leak into another connection's task.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from portcullis.basics.ip import IPAddress


@dataclass(frozen=True, slots=True)
class Balanced:
    balancer: str  # "ip:port" of the balancer's connection to us
    # What the client connected to, per the header (None for a LOCAL/UNKNOWN header).
    destination: tuple[IPAddress, int] | None


BALANCED: ContextVar[Balanced | None] = ContextVar("balanced", default=None)


def balancer_of_this_connection() -> str | None:
    """The balancer in front of the connection this task serves, if any."""
    balanced = BALANCED.get()
    return balanced.balancer if balanced is not None else None
