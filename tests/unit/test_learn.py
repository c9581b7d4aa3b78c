"""`portcullis learn` on logs written by the real DecisionLog: what is learnt, what is not."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from portcullis.basics.errors import LearnError
from portcullis.basics.vocabulary import Decision, Mode, Reason
from portcullis.cli import EXIT_OK, EXIT_USAGE, main
from portcullis.config import parse_policy
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.observe.log import DecisionLog
from portcullis.policy.engine import Engine
from portcullis.tools.learn import learn_policy, read_logs, registry_groups, render

Seen = tuple[str, str, int]  # client, host, port


def write_log(path: Path, seen: list[Seen], *, decision: Decision = Decision.REPORT,
              reason: Reason = Reason.NO_RULE, mode: Mode = "explicit") -> Path:
    log = DecisionLog(path)
    for n, (client, host, port) in enumerate(seen):
        log.decision(DecisionEvent(time.time(), f"t-{n}", client, 40000 + n, mode, host, port,
                                   host, None, decision, reason))
        log.close_event(CloseEvent(time.time(), f"t-{n}", client, host, 10, 20, 0.1, "eof"))
    log.close()
    return path


def learnt(tmp_path: Path, seen: list[Seen], **kwargs: bool) -> dict[str, object]:
    found = read_logs([write_log(tmp_path / "d.jsonl", seen)])
    policy = learn_policy(found, **kwargs)
    parse_policy(render(policy, found, ["d.jsonl"]))
    return policy


def decide(policy: dict[str, object], client: str, host: str, port: int = 443) -> str:
    engine = Engine(parse_policy(yaml.safe_dump(policy)))
    is_ip = "/" not in host and host.replace(".", "").isdigit()
    return engine.decide(ipaddress.ip_address(client), host, port, is_ip=is_ip).decision.value


def test_exactly_what_was_seen_is_allowed(tmp_path: Path) -> None:
    seen = [(f"10.0.0.{i}", "us.icr.io", 443) for i in range(4)]
    seen += [("10.0.0.5", "us.icr.io", 443), ("10.0.0.5", "dd0.icr.io", 443),
             *((f"10.0.0.{i}", "dd0.icr.io", 443) for i in range(4))]
    policy = learnt(tmp_path, seen)
    assert policy["sources"] == {"clients": ["10.0.0.0/30", "10.0.0.5/32"]}
    assert policy["rules"] == [{"name": "learnt", "from": ["clients"],
                                "to": ["dd0.icr.io", "us.icr.io"], "ports": [443],
                                "action": "allow"}]
    assert policy["default"] == "deny" and policy["mode"] == "enforce"
    assert decide(policy, "10.0.0.2", "dd0.icr.io") == "allow"
    assert decide(policy, "10.0.0.4", "dd0.icr.io") == "deny"  # never seen as a client
    assert decide(policy, "10.0.0.2", "dd2.icr.io") == "deny"  # never seen as a name
    assert decide(policy, "10.0.0.2", "us.icr.io", 80) == "deny"  # never seen on that port


def test_clients_with_different_needs_get_their_own_group(tmp_path: Path) -> None:
    policy = learnt(tmp_path, [
        ("10.1.0.1", "us.icr.io", 443), ("10.1.0.2", "us.icr.io", 443),
        ("192.168.7.9", "quay.io", 443), ("192.168.7.9", "mirror.example.com", 80),
        ("192.168.7.9", "mirror.example.com", 443),
    ])
    assert policy["sources"] == {"clients-1": ["10.1.0.1/32", "10.1.0.2/32"],
                                 "clients-2": ["192.168.7.9/32"]}
    assert [(r["name"], r["to"], r["ports"]) for r in policy["rules"]] == [  # type: ignore
        ("learnt-clients-1", ["us.icr.io"], [443]),
        ("learnt-clients-2-port-80-443", ["mirror.example.com"], [80, 443]),
        ("learnt-clients-2-port-443", ["quay.io"], [443]),
    ]
    assert decide(policy, "10.1.0.1", "quay.io") == "deny"
    assert decide(policy, "192.168.7.9", "mirror.example.com", 80) == "allow"
    assert decide(policy, "192.168.7.9", "quay.io", 80) == "deny"


def test_ip_literal_destinations_become_single_address_cidrs(tmp_path: Path) -> None:
    policy = learnt(tmp_path, [(client, dest, 443) for client in ("10.0.0.2", "::ffff:10.0.0.3")
                               for dest in ("198.51.100.7", "2001:db8::5")])
    assert policy["sources"] == {"clients": ["10.0.0.2/31"]}  # v4-mapped folded to v4
    assert policy["rules"][0]["to"] == ["198.51.100.7/32", "2001:db8::5/128"]  # type: ignore


def test_registry_aware_uses_wildcards_and_catalog_references() -> None:
    groups = registry_groups([
        "us.icr.io", "dd0.icr.io", "registry.ng.bluemix.net", "dd1-icr.ibm-zh.com",
        "registry-1.docker.io", "auth.docker.io",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "git.example.com",
    ])
    assert groups["us.icr.io"].to_yaml() == "*.icr.io"
    assert groups["dd0.icr.io"].to_yaml() == "*.icr.io"
    assert groups["dd1-icr.ibm-zh.com"].to_yaml() == "*.ibm-zh.com"
    assert groups["registry.ng.bluemix.net"].to_yaml() == "registry.ng.bluemix.net"
    assert groups["auth.docker.io"].to_yaml() == {"catalog": "docker-hub"}
    assert groups["registry-1.docker.io"] == groups["auth.docker.io"]
    ecr = groups["123456789012.dkr.ecr.us-east-1.amazonaws.com"].to_yaml()
    assert ecr == {"catalog": "amazon-ecr",
                   "params": {"account": "123456789012", "region": "us-east-1"}}
    assert groups["git.example.com"].to_yaml() == "git.example.com"


def test_registry_aware_policy_allows_the_registry_not_the_rest(tmp_path: Path) -> None:
    policy = learnt(tmp_path, [("10.0.0.1", "us.icr.io", 443), ("10.0.0.1", "dd0.icr.io", 443),
                               ("10.0.0.1", "registry-1.docker.io", 443)], registry_aware=True)
    assert policy["rules"][0]["to"] == [{"catalog": "docker-hub"}, "*.icr.io"]  # type: ignore
    assert decide(policy, "10.0.0.1", "dd2.icr.io") == "allow"  # the redirect of tomorrow
    assert decide(policy, "10.0.0.1", "production.cloudflare.docker.com") == "allow"
    assert decide(policy, "10.0.0.1", "quay.io") == "deny"


def test_refusals_and_enforced_denials_are_not_learnt(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    write_log(path, [("10.0.0.1", "us.icr.io", 443)])
    write_log(path, [("10.0.0.1", "metadata.internal", 443)],
              decision=Decision.DENY, reason=Reason.ADDRESS_FORBIDDEN)
    write_log(path, [("10.0.0.1", "evil.example", 443)],
              decision=Decision.DENY, reason=Reason.NO_RULE)
    write_log(path, [("10.0.0.1", "dd0.icr.io", 443)],
              decision=Decision.ALLOW, reason=Reason.RULE_ALLOW, mode="transparent")
    with path.open("a") as f:
        f.write("not json\n")
    found = read_logs([path])
    policy = learn_policy(found)
    assert policy["rules"][0]["to"] == ["dd0.icr.io", "us.icr.io"]
    assert found.decisions == 4
    assert dict(found.skipped) == {
        "refused whatever the rules say (address_forbidden)": 1,
        "denied by an enforcing policy (no_rule)": 1,
        "unreadable line": 1,
    }
    text = render(policy, found, [str(path)])
    assert text.startswith("# Learnt by `portcullis learn` from 4 decisions (")
    assert "# Not learnt: denied by an enforcing policy (no_rule): 1, " in text


def test_nothing_to_learn(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LearnError, match="no decision records"):
        learn_policy(read_logs([empty]))
    denied = write_log(tmp_path / "denied.jsonl", [("10.0.0.1", "x.example", 443)],
                       decision=Decision.DENY, reason=Reason.NO_RULE)
    with pytest.raises(LearnError, match="1 decisions, none let through"):
        learn_policy(read_logs([denied]))
    result = CliRunner().invoke(main, ["learn", str(denied)])
    assert result.exit_code == EXIT_USAGE
    assert "none let through" in result.stderr


def test_cli_writes_a_valid_policy(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", [("10.0.0.1", "us.icr.io", 443),
                                           ("10.0.0.1", "dd0.icr.io", 443)])
    out = tmp_path / "learnt.yaml"
    result = CliRunner().invoke(main, ["learn", str(log), "--registry-aware", "-o", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout == ""
    assert f"learnt 1 source group, 1 rule, 1 destination from 2 decisions; written to {out}" \
        in result.stderr
    policy = parse_policy(out.read_text())
    assert [d for r in policy.rules for d in r.to] == ["*.icr.io"]
    validated = CliRunner().invoke(main, ["validate", "-c", str(out)])
    assert validated.exit_code == EXIT_OK, validated.output
