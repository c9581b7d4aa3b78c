"""The decision engine, table-driven (smokescreen style), and explain's agreement."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.basics.vocabulary import Decision, Reason
from portcullis.config import parse_policy
from portcullis.policy import engine as engine_module
from portcullis.policy.engine import Engine, SourceIndex
from portcullis.policy.explain import explain

POLICY = textwrap.dedent(
    """\
    version: 1
    sources:
      workers: [10.240.0.0/24, 10.240.1.17/32]
      builders: [10.250.0.0/16]
      inner: [10.250.3.0/24]
      v6: ["fd00:1::/64"]
    rules:
      - name: block-legacy
        from: [workers]
        to: [registry.bluemix.net]
        action: deny
      - name: ibm
        from: [workers, v6]
        to: ["*.icr.io", icr.io]
        ports: [443]
      - name: builders-http
        from: [builders]
        to: [deb.example.org]
        ports: [80, 443]
      - name: inner-wide
        from: [inner]
        to: ["*.example.org"]
      - name: by-address
        from: [builders]
        to: [203.0.113.0/24]
    default: deny
    """
)

ENGINE = Engine(parse_policy(POLICY))


@pytest.mark.parametrize(
    ("client", "host", "port", "decision", "reason", "rule"),
    [
        ("10.240.0.5", "us.icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("10.240.0.5", "dd0.us.icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("10.240.0.5", "icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("10.240.1.17", "de.icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("fd00:1::9", "de.icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("::ffff:10.240.0.5", "de.icr.io", 443, Decision.ALLOW, Reason.RULE_ALLOW, "ibm"),
        ("10.240.0.5", "us.icr.io", 80, Decision.DENY, Reason.PORT_NOT_ALLOWED, None),
        ("10.240.0.5", "evilicr.io", 443, Decision.DENY, Reason.NO_RULE, None),
        ("10.240.0.5", "registry.bluemix.net", 443, Decision.DENY, Reason.RULE_DENY,
         "block-legacy"),
        ("10.240.1.18", "us.icr.io", 443, Decision.DENY, Reason.SOURCE_UNKNOWN, None),
        ("10.250.9.9", "us.icr.io", 443, Decision.DENY, Reason.NO_RULE, None),
        ("10.250.9.9", "deb.example.org", 80, Decision.ALLOW, Reason.RULE_ALLOW, "builders-http"),
        # Nested groups: 10.250.3.x is in builders and inner; the first rule wins.
        ("10.250.3.4", "deb.example.org", 80, Decision.ALLOW, Reason.RULE_ALLOW, "builders-http"),
        ("10.250.3.4", "x.example.org", 443, Decision.ALLOW, Reason.RULE_ALLOW, "inner-wide"),
        ("10.250.3.4", "example.org", 443, Decision.DENY, Reason.NO_RULE, None),
        ("10.250.9.9", "x.example.org", 443, Decision.DENY, Reason.NO_RULE, None),
    ],
)
def test_decide(
    client: str, host: str, port: int, decision: Decision, reason: Reason, rule: str | None
) -> None:
    verdict = ENGINE.decide(ipaddress.ip_address(client), host, port)
    assert (verdict.decision, verdict.reason, verdict.rule_name) == (decision, reason, rule)


@pytest.mark.parametrize(
    ("client", "address", "decision"),
    [
        ("10.250.0.1", "203.0.113.9", Decision.ALLOW),
        ("10.250.0.1", "203.0.114.9", Decision.DENY),
        ("10.240.0.5", "203.0.113.9", Decision.DENY),
    ],
)
def test_decide_ip_literal(client: str, address: str, decision: Decision) -> None:
    verdict = ENGINE.decide(ipaddress.ip_address(client), address, 443, is_ip=True)
    assert verdict.decision == decision


def test_the_engine_says_what_the_rules_say_in_report_mode_too() -> None:
    # Report mode is admission's (proxy/admission.py), applied once, after the rules.
    engine = Engine(parse_policy(POLICY.replace("default: deny", "mode: report\ndefault: deny")))
    verdict = engine.decide(ipaddress.ip_address("10.240.0.5"), "evil.example", 443)
    assert (verdict.decision, verdict.reason) == (Decision.DENY, Reason.NO_RULE)
    assert not verdict.allowed
    allowed = engine.decide(ipaddress.ip_address("10.240.0.5"), "us.icr.io", 443)
    assert allowed.decision == Decision.ALLOW


def test_default_allow() -> None:
    engine = Engine(parse_policy(POLICY.replace("default: deny", "default: allow")))
    verdict = engine.decide(ipaddress.ip_address("10.240.0.5"), "evil.example", 443)
    assert (verdict.decision, verdict.reason) == (Decision.ALLOW, Reason.NO_RULE)
    denied = engine.decide(ipaddress.ip_address("10.240.0.5"), "registry.bluemix.net", 443)
    assert denied.decision == Decision.DENY


def test_explain_names_why_earlier_rules_missed() -> None:
    text = explain(ENGINE, ipaddress.ip_address("10.250.3.4"), "x.example.org", 443).to_text()
    assert "source: client is not in workers" in text
    assert "destination: x.example.org matches none of its 1 destination(s)" in text
    assert "=> rule 'inner-wide' (allow): matches: x.example.org by *.example.org" in text
    assert text.endswith("decision ALLOW by rule 'inner-wide' (reason: rule_allow)")


def test_explain_json_shape() -> None:
    data = explain(ENGINE, ipaddress.ip_address("10.240.0.5"), "us.icr.io", 80).to_dict()
    assert data["decision"] == "deny"
    assert data["reason"] == "port_not_allowed"
    assert data["source_groups"] == ["workers"]
    assert [r["matches"] for r in data["rules"]] == [False, False, False, False, False]


HOSTS = ["us.icr.io", "icr.io", "a.b.icr.io", "registry.bluemix.net", "deb.example.org",
         "x.example.org", "example.org", "evil.example", "203.0.113.9"]
CLIENTS = ["10.240.0.5", "10.240.1.17", "10.250.3.4", "10.250.8.1", "192.0.2.1", "fd00:1::1"]
hosts = st.sampled_from(HOSTS)
clients = st.sampled_from(CLIENTS)


@settings(max_examples=300, deadline=None)
@given(client=clients, host=hosts, port=st.sampled_from([80, 443, 8443]))
def test_explain_agrees_with_decide(client: str, host: str, port: int) -> None:
    address = ipaddress.ip_address(client)
    is_ip = host[0].isdigit()
    verdict = ENGINE.decide(address, host, port, is_ip=is_ip)
    explanation = explain(ENGINE, address, host, port, is_ip=is_ip)
    matched = [rule.name for rule, trace, _ in explanation.traces if trace.matches]
    assert matched[:1] == ([verdict.rule_name] if verdict.rule else [])


def test_source_index_caches_an_ipv4_mapped_client_under_its_own_address() -> None:
    # A dual-stack listener sees every IPv4 client as ::ffff:a.b.c.d: those
    # lookups must hit the cache too, not redo the longest-prefix walk each time.
    index = SourceIndex({"workers": [ipaddress.ip_network("10.240.0.0/24")]})
    mapped = ipaddress.ip_address("::ffff:10.240.0.7")
    assert index.groups_of(mapped) == {"workers"}
    assert index._cache.get(mapped) == {"workers"}


@pytest.mark.parametrize(("text", "groups"), [
    ("10.240.0.7", {"workers"}), ("::ffff:10.240.0.7", {"workers"}), ("10.241.0.7", set()),
    ("fe80::1%eth0", set()),
])
def test_source_index_answers_a_peer_text_as_its_address(text: str, groups: set[str]) -> None:
    # The proxy asks with the socket's peer text (a str hashes in C); the
    # answer must be the address's, asked first or second.
    index = SourceIndex({"workers": [ipaddress.ip_network("10.240.0.0/24")]})
    address = ipaddress.ip_address(text.partition("%")[0])
    for _ in range(2):
        assert index.groups_of(text) == index.groups_of(address) == groups


def test_remembered_verdicts_are_the_rules_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    # decide_for keeps its verdicts (a small table here, so it also fills and
    # starts over): asked twice, in any order, it answers as the rules do.
    monkeypatch.setattr(engine_module, "_DECIDED_MAX", 7)
    engine = Engine(parse_policy(POLICY))
    cases = [(ipaddress.ip_address(c), h, p) for c in CLIENTS for h in HOSTS for p in (80, 443)]
    for _ in range(2):
        for client, host, port in cases:
            groups = engine.groups_of(client)
            is_ip = host[0].isdigit()
            assert engine.decide_for(groups, host, port, is_ip=is_ip) == \
                engine._decide_for(groups, host, port, is_ip)
        cases.reverse()
    assert 0 < len(engine._decided) <= 7
