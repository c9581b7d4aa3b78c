"""upstream.resolve_and_check: which addresses a verdict lets the proxy dial."""

from __future__ import annotations

import asyncio
import io
import ipaddress

import pytest

from portcullis.config import parse_policy
from portcullis.observe.log import DecisionLog
from portcullis.observe.metrics import Metrics
from portcullis.policy.decisions import Decision, Reason
from portcullis.proxy.state import Attempt, FirewallState
from portcullis.proxy.upstream import Refused, resolve_and_check

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
default: deny
resolver:
  hosts:
    inside.example: [10.9.0.1]
"""
CLIENT = ipaddress.ip_address("10.240.0.5")


def _state(mode: str) -> FirewallState:
    return FirewallState(
        parse_policy(POLICY.format(mode=mode)), DecisionLog(io.StringIO()), Metrics()
    )


def _check(state: FirewallState, host: str, is_ip: bool) -> tuple[Attempt, list[str]]:
    attempt = Attempt(state, "explicit", str(CLIENT), 40000, "t")
    verdict = state.engine.decide(CLIENT, host, 443, is_ip=is_ip)
    attempt.set_verdict(verdict)

    async def run() -> list[str]:
        return [str(a) for a in await resolve_and_check(state, attempt, verdict, host, is_ip)]

    return attempt, asyncio.run(run())


@pytest.mark.parametrize(("host", "is_ip"), [("10.1.2.3", True), ("inside.example", False)])
def test_report_mode_deny_rule_vouches_for_no_address(host: str, is_ip: bool) -> None:
    # A deny rule names the inside network to keep it out. A dry run turns its
    # denial into a report, but must not turn its CIDR (or resolves_to) into
    # permission to dial an internal address: address safety holds in every mode.
    state = _state("report")
    assert state.engine.decide(CLIENT, host, 443, is_ip=is_ip).decision is Decision.REPORT
    with pytest.raises(Refused) as caught:
        _check(state, host, is_ip)
    assert caught.value.reason is Reason.ADDRESS_FORBIDDEN


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_allow_rule_cidr_vouches_for_its_addresses(mode: str) -> None:
    attempt, addresses = _check(_state(mode), "192.168.7.9", True)
    assert addresses == ["192.168.7.9"] and attempt.decision is Decision.ALLOW
