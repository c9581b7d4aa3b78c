"""What `portcullis check` found: per name, per pull step, and the diagnoses.

Plain records shared by the probes (which fill them), the diagnosis (which
reads them) and the views (table, JSON), so none of those import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from portcullis.tools.netprobe import Kind, Problem
from portcullis.tools.tlsprobe import CertInfo


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but will not for long (a certificate about to expire)
    FAIL = "fail"
    SKIP = "skip"  # not run: an earlier step failed, or it does not apply


@dataclass
class Step:
    step: str  # dns, connect, tls, http
    status: Status
    detail: str
    kind: Kind | None = None
    reason: str | None = None  # X-Portcullis-Reason of a proxy refusal
    rule: str | None = None
    http_status: int | None = None
    ms: float | None = None

    @classmethod
    def failed(cls, step: str, problem: Problem, ms: float | None = None) -> Step:
        return cls(step, Status.FAIL, problem.message, problem.kind, problem.reason,
                   problem.rule, problem.status, ms)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "status": self.status.value,
                               "detail": self.detail}
        for key in ("reason", "rule", "http_status", "ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 1) if key == "ms" else value
        if self.kind is not None:
            out["kind"] = self.kind.value
        return out


STEPS = ("dns", "connect", "tls", "http")


@dataclass
class NameReport:
    name: str
    port: int
    roles: list[str]  # api, token, blob...: what the name is for, decides the HTTP check
    steps: list[Step] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    cert: CertInfo | None = None
    via: str | None = None  # "proxy" or "direct"
    bypass: str | None = None  # why it went direct with a proxy set: the NO_PROXY entry

    @property
    def label(self) -> str:
        return self.name if self.port == 443 else f"{self.name}:{self.port}"

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.step == name), None)

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if s.status is Status.FAIL), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "port": self.port, "roles": self.roles,
            "ok": self.failure is None, "addresses": self.addresses,
            "via": self.via, "steps": [s.to_dict() for s in self.steps],
        }
        if self.bypass is not None:
            out["no_proxy_match"] = self.bypass
        if self.cert is not None:
            out["certificate"] = {"subject": self.cert.subject, "issuer": self.cert.issuer,
                                  "not_after": self.cert.not_after.isoformat(),
                                  "days_left": self.cert.days_left}
        return out


@dataclass
class PullStep:
    step: str  # api, token, manifest, index, blob
    target: str  # the URL or object the step is about
    status: Status
    detail: str
    kind: Kind | None = None
    reason: str | None = None
    rule: str | None = None
    host: str | None = None  # where a failure happened (a redirect target, say)
    hops: list[str] = field(default_factory=list)  # hosts visited, redirects included

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "target": self.target,
                               "status": self.status.value, "detail": self.detail,
                               "hops": self.hops}
        for key in ("reason", "rule", "host"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.kind is not None:
            out["kind"] = self.kind.value
        return out


@dataclass(frozen=True)
class Diagnosis:
    severity: str  # error or warning
    name: str | None
    kind: Kind | None
    message: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "name": self.name,
                "kind": self.kind.value if self.kind else None, "reason": self.reason,
                "message": self.message}


@dataclass
class Report:
    proxy: str | None
    names: list[NameReport]
    image: str | None = None
    pull: list[PullStep] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    no_proxy: str | None = None  # the NO_PROXY in effect when a proxy is set

    @property
    def mixed(self) -> bool:
        """A proxy is set and some names went direct (or NO_PROXY could send them)."""
        return self.proxy is not None and (
            bool(self.no_proxy) or any(n.via == "direct" for n in self.names))

    @property
    def ok(self) -> bool:
        return all(n.failure is None for n in self.names) and all(
            p.status is not Status.FAIL for p in self.pull)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "proxy": self.proxy,
            "no_proxy": self.no_proxy,
            "names": [n.to_dict() for n in self.names],
            "image": self.image,
            "pull": [p.to_dict() for p in self.pull],
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }
