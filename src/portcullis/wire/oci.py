"""Requests of the OCI distribution API, classified (sans-IO, docs/semantics.md "Inspection").

A method and a request target in, an `OciRequest` out: which endpoint, which
repository, which reference, and for a token request the scopes it asks for.
Nothing here decides: policy/inspection.py judges an `OciRequest` against a
rule. A target that could be read two ways (percent-encoding, `..`, empty
components) is a `BadRequest`, because the registry might read it the other way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl

from portcullis.basics.errors import BadRequest
from portcullis.basics.repositories import is_repository_name

_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9._=-]+\Z")
# Registry-style paths that carry the repository before them.
_ENDPOINTS = ("manifests", "blobs", "tags", "referrers")


class Endpoint(StrEnum):
    PING = "ping"  # /v2/
    CATALOG = "catalog"  # /v2/_catalog
    MANIFEST = "manifest"  # /v2/<name>/manifests/<reference>
    BLOB = "blob"  # /v2/<name>/blobs/<digest>
    UPLOAD = "upload"  # /v2/<name>/blobs/uploads/[<id>]
    TAGS = "tags"  # /v2/<name>/tags/list
    REFERRERS = "referrers"  # /v2/<name>/referrers/<digest>
    TOKEN = "token"  # a token endpoint: anything outside /v2/ that asks for scopes
    OTHER = "other"  # a path no registry client needs


@dataclass(frozen=True, slots=True)
class Scope:
    """One `scope` of a token request: `repository:ns/app:pull,push`."""

    type: str
    name: str
    actions: frozenset[str]


@dataclass(frozen=True, slots=True)
class OciRequest:
    method: str
    path: str
    endpoint: Endpoint
    repository: str | None = None
    reference: str | None = None  # a tag or a digest (manifests, blobs, referrers)
    scopes: tuple[Scope, ...] = ()

    @property
    def by_digest(self) -> bool:
        return self.reference is not None and _DIGEST.match(self.reference) is not None


def parse_scope(text: str) -> Scope:
    """`TYPE:NAME:ACTIONS`; the name may itself hold a `:` (a registry with a port)."""
    kind, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        raise BadRequest(f"token scope {text[:100]!r} is not TYPE:NAME:ACTIONS")
    return Scope(kind, name, frozenset(a for a in actions.split(",") if a))


def scopes_of(query: str) -> tuple[Scope, ...]:
    """Every scope of a query string or form body; several may share one parameter,
    separated by spaces (RFC 6749 §3.3), or come in several `scope=` fields."""
    found: list[Scope] = []
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=100)
    except ValueError as exc:
        raise BadRequest(f"token request: {exc}") from None
    for key, value in pairs:
        if key == "scope":
            found.extend(parse_scope(part) for part in value.split(" ") if part)
    return tuple(found)


def _repository_request(method: str, path: str, parts: list[str]) -> OciRequest:
    # The endpoint keyword is the last one that can end a repository name: a
    # repository may itself have a component called `blobs` or `tags`.
    for i in range(len(parts) - 1, 0, -1):
        word, tail = parts[i], parts[i + 1 :]
        if word not in _ENDPOINTS:
            continue
        name = "/".join(parts[:i])
        if word == "tags" and tail == ["list"]:
            return OciRequest(method, path, Endpoint.TAGS, name)
        if word == "blobs" and tail[:1] == ["uploads"] and len(tail) <= 2:
            if len(tail) == 2 and not _UPLOAD_ID.match(tail[1]):
                break
            return OciRequest(method, path, Endpoint.UPLOAD, name)
        if len(tail) != 1:
            continue
        endpoint = {"manifests": Endpoint.MANIFEST, "blobs": Endpoint.BLOB,
                    "referrers": Endpoint.REFERRERS}.get(word)
        if endpoint is not None:
            return OciRequest(method, path, endpoint, name, tail[0])
    return OciRequest(method, path, Endpoint.OTHER)


def classify(method: str, target: str) -> OciRequest:
    """What a request is, from its method and origin-form target."""
    if not target.startswith("/"):
        raise BadRequest(f"request target {target[:100]!r} is not origin-form (/path)")
    path, _, query = target.partition("?")
    if not path.startswith("/v2/") and path != "/v2":
        scopes = scopes_of(query)
        has_query = any(k in ("scope", "service") for k, _ in parse_qsl(query))
        if scopes or has_query or path.rstrip("/").endswith("/token"):
            return OciRequest(method, path, Endpoint.TOKEN, scopes=scopes)
        return OciRequest(method, path, Endpoint.OTHER)
    if "%" in path or "\\" in path:
        raise BadRequest(f"registry path {path[:100]!r} is percent-encoded or has a backslash;"
                         " a registry client sends repository names as they are")
    rest = path[len("/v2/"):] if path != "/v2" else ""
    if rest == "":
        return OciRequest(method, path, Endpoint.PING)
    if rest == "_catalog":
        return OciRequest(method, path, Endpoint.CATALOG)
    parts = rest.split("/")
    if parts[-1] == "" and len(parts) > 1 and parts[-2] == "uploads":
        parts.pop()  # `/blobs/uploads/` opens an upload: its one trailing slash is part of it
    if any(p in ("", ".", "..") for p in parts):
        raise BadRequest(f"registry path {path[:100]!r} has an empty, `.` or `..` component")
    request = _repository_request(method, path, parts)
    if request.repository is not None and not is_repository_name(request.repository):
        # A pattern may match what the registry would read as another name.
        raise BadRequest(f"{request.repository[:100]!r} is not a repository name (lowercase"
                         " components of letters and digits joined by `.`, `_`, `__`, `-`)")
    return request
