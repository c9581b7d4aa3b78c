"""`portcullis audit FILE`: which image digests each client pulled, and what was refused.

Reads the JSON lines the proxy wrote (`--log FILE`), keeps the `audit` events
(observe/audit.py) and folds them by client: each manifest digest with its
registry, repository, the references it was asked for, how often and when;
and the refused requests counted by reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from portcullis.basics.errors import InvalidInput


class AuditError(InvalidInput):
    """A log that cannot be summarised; the message names the line."""


@dataclass(slots=True)
class Pulled:
    registry: str
    repository: str
    digest: str
    references: set[str] = field(default_factory=set)
    count: int = 0
    first: str = ""
    last: str = ""


@dataclass(slots=True)
class ClientSummary:
    client: str
    identity: str | None = None
    pulled: dict[tuple[str, str, str], Pulled] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


Clients = dict[tuple[str, str], ClientSummary]


def summarise(lines: Iterable[str], source: str = "<log>") -> Clients:
    clients: Clients = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditError(f"{source}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or record.get("event") != "audit":
            continue
        _fold(clients, record)
    return clients


def _fold(clients: Clients, record: dict[str, Any]) -> None:
    # A login is its own client: two runners behind one address pulled apart.
    client = str(record.get("client"))
    identity = str(record["identity"]) if record.get("identity") else None
    summary = clients.setdefault((client, identity or ""), ClientSummary(client, identity))
    if record.get("decision") == "deny":
        reason = str(record.get("reason"))
        summary.refused[reason] = summary.refused.get(reason, 0) + 1
        return
    digest = record.get("digest")
    if not digest:
        return
    key = (str(record.get("registry")), str(record.get("repository")), str(digest))
    pulled = summary.pulled.setdefault(key, Pulled(*key))
    pulled.count += 1
    if record.get("reference"):
        pulled.references.add(str(record["reference"]))
    when = str(record.get("time", ""))
    pulled.first = min(pulled.first, when) if pulled.first else when
    pulled.last = max(pulled.last, when)


def to_json(clients: Clients) -> list[dict[str, Any]]:
    return [
        {"client": s.client, "identity": s.identity,
         "pulled": [{"registry": p.registry, "repository": p.repository, "digest": p.digest,
                     "references": sorted(p.references), "count": p.count,
                     "first": p.first, "last": p.last}
                    for p in sorted(s.pulled.values(), key=lambda p: (p.first, p.digest))],
         "refused": dict(sorted(s.refused.items()))}
        for s in sorted(clients.values(), key=lambda s: (s.client, s.identity or ""))
    ]


def to_text(clients: Clients) -> str:
    if not clients:
        return "no audit events (is a rule inspecting? see `inspect:` in the policy)"
    lines: list[str] = []
    for entry in to_json(clients):
        who = f" ({entry['identity']})" if entry["identity"] else ""
        lines.append(f"client {entry['client']}{who}")
        for p in entry["pulled"]:
            refs = ",".join(p["references"]) or "-"
            lines.append(f"  {p['registry']}/{p['repository']}@{p['digest']}  refs {refs}"
                         f"  x{p['count']}  {p['first']} .. {p['last']}")
        if entry["refused"]:
            refused = ", ".join(f"{r} x{n}" for r, n in entry["refused"].items())
            lines.append(f"  refused: {refused}")
    return "\n".join(lines)
