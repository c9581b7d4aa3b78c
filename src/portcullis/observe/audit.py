"""What inspection reports per request: a manifest served, or a request refused.

One `AuditEvent` per manifest a client received (the digest is the sha256 of
the bytes Portcullis relayed, so it is what the client got, whatever the
registry's headers said) and one per refused request. The log writes it as
an `"event": "audit"` line; `portcullis audit FILE` summarises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portcullis.basics.vocabulary import Decision, Reason


@dataclass(frozen=True, slots=True)
class AuditEvent:
    time: float
    id: str  # the connection's id, as in its decision record
    client: str
    registry: str  # the inspected name
    rule: str | None
    method: str
    path: str
    decision: Decision
    reason: Reason
    status: int
    repository: str | None = None
    reference: str | None = None
    digest: str | None = None  # sha256 of the manifest bytes served
    registry_digest: str | None = None  # the registry's Docker-Content-Digest
    media_type: str | None = None
    size: int | None = None
    message: str | None = None  # a refusal's words, as the client printed them
    # Who the connection's client proved to be, and the load balancer it came
    # through: as in the connection's decision record, so the audit alone says
    # which login pulled a digest.
    identity: str | None = None
    balancer: str | None = None

    def fields(self) -> dict[str, Any]:
        """The log line's fields after the envelope, None-valued ones left out."""
        out: dict[str, Any] = {
            "id": self.id, "client": self.client, "registry": self.registry, "rule": self.rule,
            "method": self.method, "path": self.path, "decision": self.decision.value,
            "reason": self.reason.value, "status": self.status,
        }
        for name in ("repository", "reference", "digest", "registry_digest", "media_type",
                     "size", "message", "identity", "balancer"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out
