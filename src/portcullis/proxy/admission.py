"""Admission: the one path from a name to a dialled socket (docs/architecture.md).

decide -> check the ClientHello -> resolve -> check every address -> order by
the original destination -> dial (or, with a parent proxy, skip the lookup of
a name and CONNECT through the parent: proxy/parent.py). Every listener
(explicit CONNECT, plain HTTP, transparent TLS and port 80) goes through
`admit`; `explain` goes through the same `prepare` and stops before the dial,
so it cannot tell an operator anything the proxy would not do.

Report mode is applied here and nowhere else: `refuse` turns a refusal into
`report` exactly when the policy runs in `mode: report`, the reason is in
`vocabulary.REPORTABLE`, and there is a name to go on with.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from typing import NamedTuple

from portcullis.basics.errors import DnsFailure, InvalidName, QuotaExceeded, Refusal
from portcullis.basics.ip import IPAddress, IPNetwork, address_text
from portcullis.basics.memo import remember
from portcullis.basics.names import normalize_name
from portcullis.basics.vocabulary import REPORTABLE, Decision, Mode, Reason
from portcullis.net.addresses import AddressVerdict, check_addresses
from portcullis.observe.metrics import Metrics
from portcullis.policy.engine import CompiledRule
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.dialer import dial
from portcullis.proxy.gate import CheckedAddresses, Gate
from portcullis.proxy.identify import identify
from portcullis.proxy.parent import dial_parent, parent_for
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead


class Checked(NamedTuple):
    """A name's resolution and the check of each address it gave."""

    # A NamedTuple, not a frozen dataclass: one is built per connection, and a
    # frozen dataclass's __init__ sets each field through object.__setattr__
    # (bench/findings.md, "Instructions per connection").
    source: str  # "literal", "hosts", "cache" or "dns"
    cnames: tuple[str, ...]
    verdicts: tuple[AddressVerdict, ...]
    failure: DnsFailure | None = None

    @property
    def dialable(self) -> list[IPAddress]:
        return [v.address for v in self.verdicts if v.allowed]


# --- the steps --------------------------------------------------------------------


def stranger(gate: Gate, client: IPAddress | str) -> bool:
    """True for a client that no request can get through: in no source group,
    with `default: deny`, in enforce mode. Refused at accept, it holds no slot."""
    if gate.report_mode or not gate.default_deny:
        return False
    groups = gate.engine.sources.groups_of(client)
    # An identity may yet make a member of a client in no address group.
    return not groups and not gate.engine.identities.reachable(groups)


def refuse(gate: Gate, attempt: Attempt, reason: Reason) -> bool:
    """Record a refusal on `attempt`; True when report mode lets it go on.

    The one place report mode is applied (docs/decisions.md, "Report mode").
    """
    report = gate.report_mode and reason in REPORTABLE and attempt.host is not None
    attempt.decision = Decision.REPORT if report else Decision.DENY
    attempt.reason = reason
    return report


async def authenticate(gate: Gate, metrics: Metrics, attempt: Attempt, head: RequestHead,
                       target: Authority) -> None:
    """Who the client is (proxy/identify.py); Refusal (407 for bad credentials,
    recorded on `attempt`) when it says it is someone it cannot prove."""
    try:
        login = await identify(gate.authenticator, attempt, head, target)
    except Refusal as refusal:
        if refusal.reason is Reason.AUTH_FAILED:
            metrics.login("failed")
        refuse(gate, attempt, refusal.reason)
        raise
    if login is not None:
        metrics.login(login)


def decide(gate: Gate, attempt: Attempt, target: Authority) -> bool:
    """Decide on the rules; True when the connection may go on."""
    attempt.host, attempt.port, attempt.is_ip = target.host, target.port, target.is_ip
    client = attempt.client  # the text: the engine's caches hash it in C
    verdict = gate.engine.decide(client, target.host, target.port, is_ip=target.is_ip,
                                 identity=attempt.identity)
    attempt.matched = verdict.rule
    if not verdict.allowed:
        # A redirected client cannot log in: asking it to would only mislabel the deny.
        if attempt.identity is None and attempt.mode is not Mode.TRANSPARENT and \
                gate.engine.could_identify(client, target.host, target.port, is_ip=target.is_ip):
            return refuse(gate, attempt, Reason.AUTH_REQUIRED)  # answered 407
        return refuse(gate, attempt, verdict.reason)
    attempt.decision, attempt.reason = verdict.decision, verdict.reason
    return True


def hello_problem(gate: Gate, sni: str | None, has_ech: bool, host: str, is_ip: bool
                  ) -> Reason | None:
    """Why a ClientHello with this SNI (and ECH or not) may not go to `host`; None if it may."""
    if has_ech and gate.policy.transparent.ech == "deny":
        return Reason.ECH_PRESENT
    if sni is None:
        # Clients send no SNI to an IP literal; for a name its absence hides the target.
        return None if is_ip else Reason.NO_SNI
    try:
        name = normalize_name(sni)
    except InvalidName:
        return Reason.SNI_MISMATCH
    return None if name == host else Reason.SNI_MISMATCH


def check_hello(gate: Gate, attempt: Attempt, sni: str | None, has_ech: bool) -> bool:
    """Check the client's ClientHello against the decided name; True when it may go on."""
    attempt.sni = sni
    assert attempt.host is not None
    problem = hello_problem(gate, sni, has_ech, attempt.host, attempt.is_ip)
    return problem is None or refuse(gate, attempt, problem)


def vouched_ranges(rule: CompiledRule | None, is_ip: bool) -> tuple[IPNetwork, ...] | None:
    """The CIDRs the deciding rule vouches for, beyond the global checks; None for none."""
    # A deny rule reaches this point only in report mode: its CIDRs name what it
    # keeps out, and a dry run must not turn them into addresses it may dial.
    if rule is None or not rule.allows:
        return None
    if is_ip:
        # A CIDR destination names the addresses itself: it vouches for them.
        return rule.cidrs
    return rule.resolves_to


_CHECKS_MAX = 4096


def _check(gate: Gate, addresses: tuple[IPAddress, ...],
           resolves_to: tuple[IPNetwork, ...] | None) -> CheckedAddresses:
    # Pure in its arguments and the gate's ranges, and the same few answers
    # recur for every connection to a name: classifying and describing them
    # each time was a visible share of the per-connection CPU. Kept by the
    # objects' identities: the resolver hands out the same tuple for a name
    # while its answer holds, a rule the same `resolves_to`, and hashing their
    # ipaddress values runs in Python (bench/findings.md, tenth part). An entry
    # holds both objects, so their ids cannot be reused while it stands.
    key = (id(addresses), id(resolves_to))
    hit = gate.checks.get(key)
    if hit is not None and hit[0] is addresses and hit[1] is resolves_to:
        return hit[2]
    verdicts = check_addresses(
        addresses, allow_ranges=gate.allow_ranges, resolves_to=resolves_to, own=gate.own
    )
    answer = tuple(address_text(a) for a in addresses), tuple(verdicts)
    remember(gate.checks, key, (addresses, resolves_to, answer), _CHECKS_MAX)
    return answer


@functools.lru_cache(maxsize=4096)
def _literal_addresses(host: str) -> tuple[IPAddress, ...]:
    # One tuple per literal, so that _check finds it again.
    return (ipaddress.ip_address(host),)


async def resolve_and_check(gate: Gate, attempt: Attempt) -> Checked:
    """Resolve the decided name (unless it is an IP literal) and check every address."""
    host = attempt.host
    assert host is not None
    if attempt.is_ip:
        addresses = _literal_addresses(host)
        source, cnames = "literal", tuple[str, ...]()
    else:
        started = time.monotonic()
        try:
            answer = await gate.resolver.resolve(host)
        except DnsFailure as exc:
            attempt.dns_ms = (time.monotonic() - started) * 1000
            return Checked("dns", (), (), exc)
        attempt.dns_ms = (time.monotonic() - started) * 1000
        addresses, source, cnames = answer.addresses, answer.source, answer.cnames
    attempt.resolved, verdicts = _check(
        gate, addresses, vouched_ranges(attempt.matched, attempt.is_ip)
    )
    return Checked(source, cnames, verdicts)


def address_refusal(checked: Checked, host: str) -> Refusal | None:
    """Why none of the checked addresses may be dialled; None when one may."""
    if checked.failure is not None:
        return Refusal(f"cannot resolve {host}: {checked.failure}",
                       reason=Reason.DNS_FAILURE, status=502)
    verdicts = checked.verdicts
    if any(v.allowed for v in verdicts):
        return None
    outside = bool(verdicts) and all(v.outside_resolves_to for v in verdicts)
    detail = "; ".join(f"{v.address}: {v.why}" for v in verdicts) or "no addresses"
    return Refusal(
        f"{host} resolves to no permitted address ({detail})",
        reason=Reason.RESOLVES_OUTSIDE if outside else Reason.ADDRESS_FORBIDDEN,
    )


def order_by_original(gate: Gate, attempt: Attempt, addresses: list[IPAddress],
                      original: IPAddress) -> list[IPAddress]:
    """The checked addresses to dial, the client's own pick first when it is one of them.

    `strict`: the original destination must be among them (Squid's host check);
    otherwise a mismatch is normal (DNS answers differ between client and proxy)
    and the resolved addresses are dialled as they are.
    """
    if original in addresses:
        return [original, *(a for a in addresses if a != original)]
    if gate.policy.transparent.strict and not refuse(
        gate, attempt, Reason.ORIGINAL_DST_MISMATCH
    ):
        raise Refusal(
            f"the client connected to {original}, which is not among the checked"
            f" addresses of {attempt.host}: {', '.join(map(str, addresses))}",
            reason=Reason.ORIGINAL_DST_MISMATCH,
        )
    return addresses


# --- the path ------------------------------------------------------------------------


_LOGIN = frozenset({Reason.AUTH_REQUIRED, Reason.AUTH_FAILED})


def refused(attempt: Attempt) -> Refusal:
    """The refusal of a decision recorded on `attempt` (403, or 407 when credentials
    would change it; no message: the answer's first line names decision, reason
    and rule)."""
    return Refusal("", reason=attempt.reason, status=407 if attempt.reason in _LOGIN else 403)


def charge_quotas(gate: Gate, attempt: Attempt) -> None:
    """Take a tunnel (and a token) from every limited group of the client, once per
    connection; QuotaExceeded (429 or 503, recorded on `attempt`) when over."""
    if attempt.leases or not gate.quotas:
        return
    groups = gate.engine.groups_of(attempt.client, attempt.identity)
    try:
        attempt.leases.append(gate.quotas.admit(groups, attempt.identity or attempt.client))
    except QuotaExceeded as exc:
        refuse(gate, attempt, exc.reason)
        raise


async def prepare(
    gate: Gate,
    attempt: Attempt,
    target: Authority,
    *,
    hello: tuple[str | None, bool] | None = None,
    original: IPAddress | None = None,
    resolve: bool = True,
    charge: bool = False,
) -> list[IPAddress]:
    """Every step before the dial; the addresses to dial, in order.

    `hello` is the ClientHello's (SNI, ECH present) when it is already known;
    `charge` takes the client's quotas (the proxy does, `explain` does not).
    Raises Refusal, with the refusal recorded on `attempt`.
    """
    if not decide(gate, attempt, target):
        raise refused(attempt)
    if hello is not None and not check_hello(gate, attempt, *hello):
        raise refused(attempt)
    if charge:
        charge_quotas(gate, attempt)
    parent = parent_for(gate, attempt.matched)
    if parent is not None:
        attempt.parent = str(parent)
        # The parent resolves the name (docs/decisions.md, "A parent proxy resolves
        # the name"); an IP literal is still checked, which needs no lookup, and
        # strict transparent mode needs the addresses to compare with.
        if not target.is_ip and not (original is not None and gate.policy.transparent.strict):
            return []
    if not resolve:
        return []
    checked = attempt.checked = await resolve_and_check(gate, attempt)
    refusal = address_refusal(checked, target.host)
    if refusal is not None:
        refuse(gate, attempt, refusal.reason)
        raise refusal
    addresses = checked.dialable
    if original is not None:
        addresses = order_by_original(gate, attempt, addresses, original)
    return addresses


async def admit(
    gate: Gate,
    metrics: Metrics,
    attempt: Attempt,
    target: Authority,
    *,
    hello: tuple[str | None, bool] | None = None,
    original: IPAddress | None = None,
) -> socket.socket:
    """`prepare`, then dial (or open a tunnel through the parent proxy): a connected
    upstream socket, or Refusal (recorded on `attempt`)."""
    try:
        addresses = await prepare(gate, attempt, target, hello=hello, original=original,
                                  charge=True)
    except QuotaExceeded as exc:
        metrics.quota_refused(exc.group, exc.limit)
        raise
    finally:
        if attempt.dns_ms is not None:
            metrics.observe_dns(attempt.dns_ms / 1000)
    parent = parent_for(gate, attempt.matched)
    try:
        if parent is not None:
            return await dial_parent(gate, metrics, attempt, parent, target)
        return await dial(gate.limits.connect_timeout, metrics, attempt, addresses,
                          target.port, mark=gate.mark_upstream)
    except Refusal as refusal:
        refuse(gate, attempt, refusal.reason)
        raise
