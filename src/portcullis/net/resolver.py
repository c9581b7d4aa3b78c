"""Asynchronous name resolution with a TTL cache and static host overrides.

The proxy resolves every name itself (docs/semantics.md §3) and dials exactly the address
it checked, so this resolver is on the path of every new connection: answers are
cached for their TTL (clamped, so a TTL of 0 cannot turn every connection into a
query and a TTL of a week cannot pin a stale address), failures that the
authority asserted (NXDOMAIN, no data) are cached briefly, and concurrent
lookups of one name share a single query.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from portcullis.basics.errors import DnsFailure, DnsFailureKind
from portcullis.basics.hostport import split_hostport
from portcullis.basics.ip import IPAddress

FailureKind = DnsFailureKind
_NEGATIVE: frozenset[str] = frozenset({"nxdomain", "no_answer"})
_PRECEDENCE: tuple[FailureKind, ...] = ("nxdomain", "timeout", "servfail", "error", "no_answer")


class Resolution(NamedTuple):
    # A NamedTuple, not a frozen dataclass: one is built per connection, and a
    # frozen dataclass's __init__ sets each field through object.__setattr__
    # (bench/findings.md, "Instructions per connection").
    name: str
    addresses: tuple[IPAddress, ...]  # IPv4 first, then IPv6, each in answer order
    source: str  # "hosts" | "cache" | "dns" | "literal" (the name was an IP address)
    ttl: float  # seconds the answer stays valid; 0 for hosts and literals (never cached)
    cnames: tuple[str, ...]  # CNAME targets followed from `name`, in order
    elapsed_ms: float


@dataclass(slots=True)
class _Entry:
    expires: float
    addresses: tuple[IPAddress, ...] = ()
    cnames: tuple[str, ...] = ()
    failure: FailureKind | None = None


def parse_server(text: str) -> tuple[str, int]:
    """ "ip", "ip:port" or "[v6]:port" (a bare IPv6 address is also accepted)."""
    try:
        host, port_text = split_hostport(text)
    except ValueError:
        raise ValueError(f"bad DNS server {text!r}: expected [v6] or [v6]:port") from None
    port = int(port_text) if port_text is not None else 53
    ip_address(host)  # raises ValueError naming the bad address
    if not 0 < port < 65536:
        raise ValueError(f"bad DNS server {text!r}: port out of range")
    return host, port


def _normalize(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _literal(name: str) -> IPAddress | None:
    try:
        return ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return None


def _kind_of(exc: BaseException) -> FailureKind:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "nxdomain"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no_answer"
    if isinstance(exc, dns.exception.Timeout):
        return "timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = exc.kwargs.get("errors") or []
        if any(err[3] == "SERVFAIL" for err in errors):
            return "servfail"
    return "error"


class Resolver:
    def __init__(
        self,
        *,
        servers: Sequence[str] = (),
        timeout: float = 2.0,
        hosts: Mapping[str, Sequence[str]] | None = None,
        min_ttl: float = 5,
        max_ttl: float = 300,
        negative_ttl: float = 5,
        max_entries: int = 10000,
        ipv6: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._ipv6 = ipv6
        self._clock = clock
        self._hosts: dict[str, tuple[IPAddress, ...]] = {}
        for name, texts in (hosts or {}).items():
            addrs = [ip_address(t) for t in texts]
            if not ipv6:
                addrs = [a for a in addrs if isinstance(a, IPv4Address)]
            addrs.sort(key=lambda a: a.version)  # stable: IPv4 first, order kept
            self._hosts[_normalize(name)] = tuple(addrs)
        self._dns = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            self._dns.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_server(s)) for s in servers
            ]
        # Per-try timeout below the total, so one lost datagram gets a retry.
        self._dns.timeout = timeout / 2
        self._dns.lifetime = timeout
        self._dns.search = []
        self._dns.use_search_by_default = False
        self._dns.cache = None  # ours, so TTL clamps and negative caching apply
        self._dns.use_edns(0, 0, 1232)  # fewer truncations and TCP retries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[Resolution]] = {}

    def _static(self, name: str) -> Resolution | None:
        # Only text that can be an IP literal is parsed as one: ip_address()
        # raising twice for every ordinary name is a hot-path cost.
        could_be_literal = name[-1:].isdigit() or ":" in name or name.startswith("[")
        literal = _literal(name) if could_be_literal else None
        if literal is not None:
            return Resolution(name, (literal,), "literal", 0.0, (), 0.0)
        addrs = self._hosts.get(name)
        if addrs is None:
            return None
        if not addrs:
            raise DnsFailure(name, "no_answer", "static hosts entry has no usable address")
        return Resolution(name, addrs, "hosts", 0.0, (), 0.0)

    def _from_cache(self, name: str, started: float) -> Resolution | None:
        entry = self._cache.get(name)
        if entry is None:
            return None
        remaining = entry.expires - self._clock()
        if remaining <= 0:
            del self._cache[name]
            return None
        self._cache.move_to_end(name)
        if entry.failure is not None:
            raise DnsFailure(name, entry.failure, "cached")
        elapsed = (time.perf_counter() - started) * 1000
        return Resolution(name, entry.addresses, "cache", remaining, entry.cnames, elapsed)

    def cached(self, name: str) -> Resolution | None:
        """What resolve() would answer without a query, or None (also for a cached failure)."""
        name = _normalize(name)
        try:
            return self._static(name) or self._from_cache(name, time.perf_counter())
        except DnsFailure:
            return None

    def clear(self) -> None:
        self._cache.clear()

    async def resolve(self, name: str) -> Resolution:
        """The addresses of `name` (IPv4 first), or DnsFailure.

        Order: IP literal, static hosts, cache, then one shared query of A and
        AAAA bounded by `timeout`. When one family answers and the other fails
        transiently, the answer is kept but cached for only `min_ttl`.
        """
        started = time.perf_counter()
        name = _normalize(name)
        if not name:
            raise DnsFailure("(empty)", "error", "empty name")
        hit = self._static(name) or self._from_cache(name, started)
        if hit is not None:
            return hit
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._lookup(name))
            self._inflight[name] = task
            task.add_done_callback(lambda t: self._settled(name, t))
        # Shielded: one waiter giving up must not cancel the query for the others.
        return await asyncio.shield(task)

    def _settled(self, name: str, task: asyncio.Task[Resolution]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved, so a failure nobody awaited is not logged

    def _store(self, name: str, entry: _Entry) -> None:
        if self._max_entries <= 0:
            return
        self._cache[name] = entry
        self._cache.move_to_end(name)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def _lookup(self, name: str) -> Resolution:
        started = time.perf_counter()
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise DnsFailure(name, "error", str(exc)) from exc
        rdtypes = ("A", "AAAA") if self._ipv6 else ("A",)
        tasks = [
            asyncio.ensure_future(
                self._dns.resolve(qname, t, raise_on_no_answer=False, search=False)
            )
            for t in rdtypes
        ]
        await asyncio.wait(tasks, timeout=self._timeout)
        addresses: list[IPAddress] = []
        cnames: tuple[str, ...] = ()
        ttls: list[float] = []
        kinds: list[FailureKind] = []
        details: list[str] = []
        for task in tasks:  # A before AAAA, so IPv4 comes first
            if not task.done():
                task.cancel()
                kinds.append("timeout")
                continue
            err = task.exception()
            if err is not None:
                kinds.append(_kind_of(err))
                details.append(str(err))
                continue
            answer = task.result()
            chain = answer.chaining_result
            cnames = cnames or tuple(
                _normalize(rrset[0].target.to_text()) for rrset in chain.cnames
            )
            if answer.rrset is None:
                kinds.append("no_answer")
                continue
            addresses.extend(ip_address(rdata.address) for rdata in answer.rrset)
            ttls.append(chain.minimum_ttl)
        await asyncio.gather(*tasks, return_exceptions=True)  # reap the cancelled
        elapsed = (time.perf_counter() - started) * 1000
        if addresses:
            ttl = min(max(min(ttls), self._min_ttl), self._max_ttl)
            if any(k not in _NEGATIVE for k in kinds):
                # One family failed transiently: use what we got, ask again soon.
                ttl = min(ttl, self._min_ttl)
            # One tuple for the entry and the answer: admission keeps its address
            # checks by the tuple's identity.
            found = tuple(addresses)
            self._store(name, _Entry(self._clock() + ttl, found, cnames))
            return Resolution(name, found, "dns", ttl, cnames, elapsed)
        # The authority's "no such name" outranks a family that timed out.
        kind: FailureKind = next((k for k in _PRECEDENCE if k in kinds), "error")
        if kind in _NEGATIVE:
            self._store(name, _Entry(self._clock() + self._negative_ttl, failure=kind))
        detail = "; ".join(details) if kind not in ("timeout", "no_answer") else ""
        if kind == "timeout":
            detail = f"no answer within {self._timeout:g}s"
        raise DnsFailure(name, kind, detail)
