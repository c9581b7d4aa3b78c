"""proxy/admission.py: the steps every listener and `explain` share, and the one
place report mode is applied (table-driven, no sockets: static resolver hosts)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import pytest

from portcullis.basics.errors import Refusal
from portcullis.basics.ip import address_text
from portcullis.basics.vocabulary import REPORTABLE, Decision, Mode, Reason
from portcullis.config import parse_policy
from portcullis.proxy.admission import _check, prepare, refuse
from portcullis.proxy.attempt import Attempt
from portcullis.proxy.gate import Gate
from portcullis.wire.authority import Authority

POLICY = """
version: 1
mode: {mode}
sources:
  workers: [10.240.0.0/24]
rules:
  - name: no-inside
    from: [workers]
    to: ["10.0.0.0/8"]
    action: deny
  - name: inside-name
    from: [workers]
    to: [inside.example]
    resolves_to: [10.9.0.0/16]
    action: deny
  - name: lab
    from: [workers]
    to: ["192.168.7.0/24"]
  - name: registry
    from: [workers]
    to: [us.icr.io, pinned.icr.io, elsewhere.icr.io]
  - name: pinned
    from: [workers]
    to: [vouched.icr.io]
    resolves_to: [203.0.113.0/24]
default: deny
resolver:
  allow_ranges: [198.51.100.0/24]   # documentation addresses stand in for public ones
  hosts:
    evil.example: [198.51.100.66]
    inside.example: [10.9.0.1]
    us.icr.io: [198.51.100.7]
    pinned.icr.io: [127.0.0.21]
    vouched.icr.io: [198.51.100.9]
"""
CLIENT = "10.240.0.5"


def _gate(mode: str) -> Gate:
    return Gate(parse_policy(POLICY.format(mode=mode)))


def _prepare(gate: Gate, host: str, is_ip: bool = False, port: int = 443,
             client: str = CLIENT, sni: str | None = None) -> tuple[Attempt, list[str]]:
    attempt = Attempt(Mode.EXPLICIT, client, 40000, "t")
    hello = (sni, False) if sni is not None else None
    addresses = asyncio.run(prepare(gate, attempt, Authority(host, port, is_ip), hello=hello))
    return attempt, [str(a) for a in addresses]


@pytest.mark.parametrize(("host", "is_ip"), [("10.1.2.3", True), ("inside.example", False)])
def test_report_mode_deny_rule_vouches_for_no_address(host: str, is_ip: bool) -> None:
    # A deny rule names the inside network to keep it out. A dry run turns its
    # denial into a report, but must not turn its CIDR (or resolves_to) into
    # permission to dial an internal address: address safety holds in every mode.
    with pytest.raises(Refusal) as caught:
        _prepare(_gate("report"), host, is_ip)
    assert caught.value.reason is Reason.ADDRESS_FORBIDDEN


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_allow_rule_cidr_vouches_for_its_addresses(mode: str) -> None:
    attempt, addresses = _prepare(_gate(mode), "192.168.7.9", True)
    assert addresses == ["192.168.7.9"] and attempt.decision is Decision.ALLOW


# (mode, host, port, client, sni) -> (decision, reason, rule, status when refused)
CASES = [
    ("enforce", "us.icr.io", 443, CLIENT, None, "allow", "rule_allow", "registry", None),
    ("report", "us.icr.io", 443, CLIENT, None, "allow", "rule_allow", "registry", None),
    ("enforce", "evil.example", 443, CLIENT, None, "deny", "no_rule", None, 403),
    ("report", "evil.example", 443, CLIENT, None, "report", "no_rule", None, None),
    ("enforce", "us.icr.io", 80, CLIENT, None, "deny", "port_not_allowed", None, 403),
    ("report", "us.icr.io", 80, CLIENT, None, "report", "port_not_allowed", None, None),
    ("enforce", "us.icr.io", 443, "192.0.2.1", None, "deny", "source_unknown", None, 403),
    ("report", "us.icr.io", 443, "192.0.2.1", None, "report", "source_unknown", None, None),
    # A loopback answer is never dialled, whatever the mode (the case).
    ("enforce", "pinned.icr.io", 443, CLIENT, None, "deny", "address_forbidden", "registry", 403),
    ("report", "pinned.icr.io", 443, CLIENT, None, "deny", "address_forbidden", "registry", 403),
    ("enforce", "vouched.icr.io", 443, CLIENT, None, "deny", "resolves_outside", "pinned", 403),
    ("report", "vouched.icr.io", 443, CLIENT, None, "deny", "resolves_outside", "pinned", 403),
    ("enforce", "us.icr.io", 443, CLIENT, "evil.example", "deny", "sni_mismatch", "registry", 403),
    ("report", "us.icr.io", 443, CLIENT, "evil.example", "report", "sni_mismatch", "registry",
     None),
    ("enforce", "us.icr.io", 443, CLIENT, "US.ICR.IO.", "allow", "rule_allow", "registry", None),
]


@pytest.mark.parametrize(
    ("mode", "host", "port", "client", "sni", "decision", "reason", "rule", "status"), CASES
)
def test_prepare_decides_once_for_every_listener(
    mode: str, host: str, port: int, client: str, sni: str | None,
    decision: str, reason: str, rule: str | None, status: int | None,
) -> None:
    attempt = Attempt(Mode.EXPLICIT, client, 40000, "t")
    hello = (sni, False) if sni is not None else None
    refusal: Refusal | None = None
    try:
        asyncio.run(prepare(_gate(mode), attempt, Authority(host, port, False), hello=hello))
    except Refusal as exc:
        refusal = exc
    assert (attempt.decision.value, attempt.reason.value, attempt.rule) == (decision, reason, rule)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert refusal.reason.value == reason


@pytest.mark.parametrize("reason", list(Reason))
def test_report_mode_reports_exactly_the_reportable_reasons(reason: Reason) -> None:
    gate = _gate("report")
    attempt = Attempt(Mode.EXPLICIT, CLIENT, 1, "t", host="us.icr.io")
    went_on = refuse(gate, attempt, reason)
    assert went_on is (reason in REPORTABLE)
    assert attempt.decision is (Decision.REPORT if went_on else Decision.DENY)


@pytest.mark.parametrize("reason", sorted(REPORTABLE))
def test_no_refusal_is_reported_without_a_name_or_in_enforce_mode(reason: Reason) -> None:
    nameless = Attempt(Mode.TRANSPARENT, CLIENT, 1, "t")
    assert refuse(_gate("report"), nameless, reason) is False
    named = Attempt(Mode.EXPLICIT, CLIENT, 1, "t", host="us.icr.io")
    assert refuse(_gate("enforce"), named, reason) is False
    assert named.decision is Decision.DENY


def test_dns_failure_is_a_502_and_never_reported() -> None:
    gate = Gate(parse_policy(POLICY.format(mode="report").replace(
        "  hosts:\n", "  servers: ['127.0.0.1:1']\n  timeout: 0.2\n  hosts:\n")))
    with pytest.raises(Refusal) as caught:
        _prepare(gate, "missing.icr.io")
    assert (caught.value.reason, caught.value.status) == (Reason.DNS_FAILURE, 502)


def test_ip_literal_client_is_unmapped_for_the_source_groups() -> None:
    mapped = str(ipaddress.IPv6Address("::ffff:" + CLIENT))
    attempt, addresses = _prepare(_gate("enforce"), "us.icr.io", client=mapped)
    assert attempt.decision is Decision.ALLOW and addresses == ["198.51.100.7"]


def test_one_gate_answers_every_case_again_as_a_fresh_gate_does() -> None:
    # The gate keeps address checks (and the engine its verdicts and source
    # groups) between connections: asked again, in the other order, the same
    # gate must answer each case as a gate that kept nothing.
    gates = {mode: _gate(mode) for mode in ("enforce", "report")}
    for cases in (CASES, CASES[::-1]):
        for mode, host, port, client, sni, decision, reason, rule, _ in cases:
            kept, fresh = (Attempt(Mode.EXPLICIT, client, 1, "t") for _ in range(2))
            hello = (sni, False) if sni is not None else None
            for gate, attempt in ((gates[mode], kept), (_gate(mode), fresh)):
                with contextlib.suppress(Refusal):
                    asyncio.run(prepare(gate, attempt, Authority(host, port, False),
                                        hello=hello))
            assert (kept.decision.value, kept.reason.value, kept.rule) == (decision, reason, rule)
            assert (kept.resolved, kept.checked) == (fresh.resolved, fresh.checked)


def test_address_checks_are_kept_by_both_the_addresses_and_the_vouching_ranges() -> None:
    gate = _gate("enforce")
    addresses = (ipaddress.ip_address("203.0.113.5"),)
    vouching = (ipaddress.ip_network("203.0.113.0/24"),)
    other = (ipaddress.ip_network("192.0.2.0/24"),)
    for _ in range(2):  # the second round answers from the table
        assert [v.allowed for v in _check(gate, addresses, vouching)[1]] == [True]
        assert [v.allowed for v in _check(gate, addresses, other)[1]] == [False]
        # Equal addresses in another tuple: not found (kept by identity), so
        # checked again, with the same answer.
        texts, verdicts = _check(gate, (ipaddress.ip_address("203.0.113.5"),), vouching)
        assert texts == ("203.0.113.5",) and verdicts[0].allowed


def test_address_text_is_str_for_every_address_object() -> None:
    addresses = [ipaddress.ip_address(t) for t in ("192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1")]
    for _ in range(2):
        for address in addresses + [ipaddress.ip_address(str(a)) for a in addresses]:
            assert address_text(address) == str(address)
