"""Exports keep Portcullis's decisions: the flattened tables against the engine,
each format's refusals, headers, and the JSON/YAML formats against the vendors'
schemas (tests/schemas). The real Squid, nginx and HAProxy are in tests/e2e."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.export_cases import CLIENTS, LISTED, PROBE_NAMES, RICH, expected, write

from portcullis.basics.errors import ExportRefused
from portcullis.cli import main
from portcullis.config import Policy
from portcullis.tools.export import FORMATS, render, spec_from_file
from portcullis.tools.export.build import spec_from_policy
from portcullis.tools.export.model import ExportSpec
from portcullis.tools.export.tables import (
    NameSet,
    applicable,
    decided_set,
    decides_allow,
    name_table,
    source_classes,
)

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SNI_FORMATS = ["squid", "nginx", "haproxy", "envoy"]
LIST_FORMATS = ["cilium", "calico", "aws-network-firewall", "azure-firewall"]
GENERATED = "2030-01-02T03:04:05Z"


def schema_errors(name: str, document: Any) -> list[str]:
    schema = json.loads((SCHEMAS / name).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def most_specific(spec: ExportSpec, client: str, name: str, port: int) -> bool:
    """What a most-specific-match target (nginx map + geo, Envoy chains) decides
    from the flattened tables: longest source prefix, exact name, longest wildcard."""
    address = ipaddress.ip_address(client)
    best: tuple[int, frozenset[str]] | None = None
    for cls in source_classes(spec):
        for network in cls.networks:
            if address in network and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, cls.groups)
    groups = best[1] if best else frozenset()
    table = name_table(applicable(spec, groups, port))
    if name in table.exact:
        return decides_allow(table.exact[name], spec.default_allow)
    above = table.covering(name)
    return decides_allow(table.wildcard[above] if above else None, spec.default_allow)


def in_set(names: NameSet, name: str) -> bool:
    return name in names.exact or any(name.endswith("." + w) for w in names.wildcards)


# --- squid, evaluated from its text -------------------------------------------


def squid_decides(text: str, client: str, host: str, port: int) -> bool:
    """Evaluate the exported acl/http_access lines the way Squid does: lines in
    order, acls on a line ANDed, values of one acl ORed, `.d` = d and under d."""
    acls: dict[str, list[tuple[str, str]]] = {}
    address = ipaddress.ip_address(client)
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "acl":
            acls.setdefault(parts[1], []).append((parts[2], parts[-1]))
            continue
        assert parts[0] == "http_access", line

        def holds(acl: str) -> bool:
            if acl == "all":
                return True
            for kind, value in acls[acl]:
                if kind == "src" and address in ipaddress.ip_network(value):
                    return True
                if kind == "port" and int(value) == port:
                    return True
                if kind == "dstdomain":
                    if value.startswith(".") and (host == value[1:] or host.endswith(value)):
                        return True
                    if host == value:
                        return True
                if kind == "dstdom_regex" and re.search(value, host):
                    return True
                if kind == "dst":
                    # Squid resolves a name for `dst`: assume the worst, that it
                    # lands in the range, so only the IP-literal guard can keep
                    # a CIDR rule off names.
                    try:
                        if ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(value):
                            return True
                    except ValueError:
                        return True
            return False

        if all(not holds(a[1:]) if a.startswith("!") else holds(a) for a in parts[2:]):
            return parts[1] == "allow"
    raise AssertionError("no http_access line decided")


def test_squid_text_decides_as_portcullis_on_the_rich_policy(tmp_path: Path) -> None:
    path, policy = write(tmp_path, RICH)
    text = render("squid", spec_from_file(path, policy))
    for client in CLIENTS.values():
        for name in PROBE_NAMES:
            for port in (443, 8443, 80):
                assert squid_decides(text, client, name, port) == expected(
                    policy, client, name, port
                ), (client, name, port)
    # Squid's `.icr.io` would let the apex through: the apex ACL takes it out
    # again where the rule only has the wildcard.
    assert "acl portcullis_r1_apex dstdomain -n private.icr.io" in text
    assert "!portcullis_r1_apex" in text


def test_flattened_tables_decide_as_portcullis_on_the_rich_policy(tmp_path: Path) -> None:
    path, policy = write(tmp_path, RICH)
    spec = spec_from_file(path, policy)
    decisions = set()
    for client in CLIENTS.values():
        for name in PROBE_NAMES:
            for port in (443, 8443):
                want = expected(policy, client, name, port)
                decisions.add(want)
                assert most_specific(spec, client, name, port) == want, (client, name, port)
    assert decisions == {True, False}


# --- random policies -------------------------------------------------------------

_NAMES = ["example.com", "a.example.com", "b.example.com", "a.a.example.com",
          "b.a.example.com", "a.b.a.example.com", "other.org"]
_PROBES = [*_NAMES, "c.example.com", "c.a.example.com", "c.b.a.example.com", "x.other.org"]
_GROUPS = {"g1": ["10.0.0.0/8"], "g2": ["10.1.0.0/16"], "g3": ["192.168.0.0/24"]}
_CLIENTS = ["10.1.0.1", "10.2.0.1", "192.168.0.1", "172.16.0.1"]


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    patterns = st.sampled_from([*_NAMES, *(f"*.{n}" for n in _NAMES)])
    rules = []
    for index in range(draw(st.integers(1, 5))):
        rules.append({
            "name": f"r{index}",
            "from": draw(st.lists(st.sampled_from(sorted(_GROUPS)), min_size=1, max_size=3,
                                  unique=True)),
            "to": draw(st.lists(patterns, min_size=1, max_size=3, unique=True)),
            "ports": draw(st.sampled_from([[443], [8443], [443, 8443]])),
            "action": draw(st.sampled_from(["allow", "deny"])),
        })
    return Policy.model_validate({
        "version": 1, "sources": _GROUPS, "rules": rules, "tls_ports": [443, 8443],
        "default": draw(st.sampled_from(["allow", "deny"])),
    })


def _spec(policy: Policy) -> ExportSpec:
    return spec_from_policy(policy, origin="generated", data=b"", generated=GENERATED)


@settings(max_examples=300, deadline=None)
@given(policies())
def test_random_policies_flatten_and_translate_to_squid_exactly(policy: Policy) -> None:
    spec = _spec(policy)
    text = render("squid", spec)
    for client in _CLIENTS:
        for name in _PROBES:
            for port in (443, 8443):
                want = expected(policy, client, name, port)
                assert most_specific(spec, client, name, port) == want, (client, name, port)
                assert squid_decides(text, client, name, port) == want, (client, name, port)


@settings(max_examples=300, deadline=None)
@given(policies())
def test_allow_lists_either_match_the_engine_or_are_refused(policy: Policy) -> None:
    spec = _spec(policy)
    for cls_client, groups in (("10.2.0.1", frozenset({"g1"})),
                               ("10.1.0.1", frozenset({"g1", "g2"}))):
        for port in (443, 8443):
            table = name_table(applicable(spec, groups, port))
            for want_allow in (True, False):
                if want_allow == spec.default_allow:
                    continue  # "everything else" is no finite list
                problems: list[str] = []
                names = decided_set(table, default_allow=spec.default_allow,
                                    want_allow=want_allow, fmt="test", problems=problems)
                if problems:
                    continue
                for name in _PROBES:
                    decided = expected(policy, cls_client, name, port)
                    assert in_set(names, name) == (decided == want_allow), (name, names)


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_report_mode_and_resolves_to_are_refused_by_every_format(
    tmp_path: Path, fmt: str
) -> None:
    text = LISTED.replace("version: 1\n", "version: 1\nmode: report\n")
    text = text.replace("    to: [icr.io,", "    resolves_to: [192.0.2.0/24]\n    to: [icr.io,")
    path, policy = write(tmp_path, text)
    with pytest.raises(ExportRefused) as caught:
        render(fmt, spec_from_file(path, policy))
    message = str(caught.value)
    assert "mode: report" in message
    assert "resolves_to" in message and "'ibm'" in message


@pytest.mark.parametrize("fmt", LIST_FORMATS[:3])
def test_list_formats_refuse_a_denial_inside_an_allowed_wildcard(
    tmp_path: Path, fmt: str
) -> None:
    path, policy = write(tmp_path, RICH.replace("tls_ports: [443, 8443]\n", ""))
    with pytest.raises(ExportRefused) as caught:
        render(fmt, spec_from_file(path, policy))
    assert "rule 'no-germany' denies de.icr.io, inside *.icr.io which rule 'registry'" in str(
        caught.value
    )


@pytest.mark.parametrize("fmt", ["nginx", "haproxy", "envoy"])
def test_sni_formats_refuse_a_plain_http_port(tmp_path: Path, fmt: str) -> None:
    path, policy = write(tmp_path, LISTED.replace("registry.ng.bluemix.net]",
                                                  "registry.ng.bluemix.net]\n    ports: [80]"))
    with pytest.raises(ExportRefused, match="port 80, which is not in tls_ports"):
        render(fmt, spec_from_file(path, policy))


def test_cidr_destinations_go_to_squid_only_for_ip_literals(tmp_path: Path) -> None:
    text = LISTED.replace("registry.ng.bluemix.net]", "registry.ng.bluemix.net, 192.0.2.0/24]")
    path, policy = write(tmp_path, text)
    squid = render("squid", spec_from_file(path, policy))
    for client, host, allowed in [("10.240.0.9", "192.0.2.7", True),
                                  ("10.240.0.9", "198.51.100.7", False),
                                  ("10.240.0.9", "icr.io", True)]:
        assert squid_decides(squid, client, host, 443) is allowed
    for fmt in LIST_FORMATS:
        with pytest.raises(ExportRefused, match="CIDR destinations"):
            render(fmt, spec_from_file(path, policy))


# --- per-format translations ----------------------------------------------------------


def test_cilium_writes_multi_label_wildcards_as_double_star_and_refuses_them_before_1_19(
    tmp_path: Path,
) -> None:
    path, policy = write(tmp_path, LISTED)
    spec = spec_from_file(path, policy)
    docs = list(yaml.safe_load_all(render("cilium", spec)))
    assert [d["metadata"]["name"] for d in docs] == ["portcullis-workers"]
    egress = docs[0]["spec"]["egress"]
    assert egress[0]["toPorts"][0]["rules"]["dns"] == [{"matchPattern": "*"}]
    # The deny rule removed registry.bluemix.net; icr.io is kept next to its wildcard.
    assert egress[1]["toFQDNs"] == [
        {"matchName": "icr.io"}, {"matchName": "registry.ng.bluemix.net"},
        {"matchPattern": "**.icr.io"},
    ]
    assert egress[1]["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
    assert docs[0]["spec"]["endpointSelector"] == {
        "matchLabels": {"portcullis.io/source-group": "workers"}
    }
    with pytest.raises(ExportRefused, match=r"\*\.icr\.io match one or more labels"):
        render("cilium", spec, {"cilium-version": "1.18"})
    exact_only = LISTED.replace('icr.io, "*.icr.io",', "us.icr.io,")
    path, policy = write(tmp_path, exact_only, "exact.yaml")
    old = yaml.safe_load_all(render("cilium", spec_from_file(path, policy),
                                    {"cilium-version": "1.14"}))
    assert all("**" not in json.dumps(d) for d in old)


def test_calico_puts_narrower_sources_first_and_ends_each_block_with_a_deny(
    tmp_path: Path,
) -> None:
    text = """\
version: 1
sources:
  all: [10.0.0.0/8]
  ci: [10.9.0.0/16]
rules:
  - name: ci
    from: [ci]
    to: [quay.io]
  - name: all
    from: [all]
    to: ["*.icr.io"]
"""
    path, policy = write(tmp_path, text)
    egress = yaml.safe_load(render("calico", spec_from_file(path, policy)))["spec"]["egress"]
    shape = [(r["action"], r.get("source", {}).get("nets"),
              r.get("destination", {}).get("domains")) for r in egress[2:]]
    assert shape == [
        ("Allow", ["10.9.0.0/16"], ["quay.io", "*.icr.io"]),
        ("Deny", ["10.9.0.0/16"], None),
        ("Allow", ["10.0.0.0/8"], ["*.icr.io"]),
        ("Deny", ["10.0.0.0/8"], None),
        ("Deny", None, None),
    ]


def test_aws_dotted_targets_only_where_the_apex_is_allowed_too(tmp_path: Path) -> None:
    path, policy = write(tmp_path, LISTED)
    doc = json.loads(render("aws-network-firewall", spec_from_file(path, policy)))
    rules = doc["RuleGroup"]["RulesSource"]["RulesSourceList"]
    assert rules == {
        "Targets": ["registry.ng.bluemix.net", ".icr.io"],
        "TargetTypes": ["TLS_SNI"],
        "GeneratedRulesType": "ALLOWLIST",
    }
    assert doc["RuleGroup"]["RuleVariables"]["IPSets"]["HOME_NET"]["Definition"] == [
        "10.240.0.0/24", "10.240.1.17/32"]
    path, policy = write(tmp_path, LISTED.replace("to: [icr.io, ", "to: ["), "noapex.yaml")
    with pytest.raises(ExportRefused, match=r"'\.icr\.io' also matches 'icr\.io'"):
        render("aws-network-firewall", spec_from_file(path, policy))


def test_aws_default_allow_with_denials_is_a_deny_list(tmp_path: Path) -> None:
    text = """\
version: 1
sources: {all: [10.0.0.0/8]}
rules:
  - {name: no-docker, from: [all], to: [docker.io, "*.docker.io"], action: deny}
default: allow
"""
    path, policy = write(tmp_path, text)
    doc = json.loads(render("aws-network-firewall", spec_from_file(path, policy)))
    assert doc["RuleGroup"]["RulesSource"]["RulesSourceList"]["GeneratedRulesType"] == "DENYLIST"
    assert doc["RuleGroup"]["RulesSource"]["RulesSourceList"]["Targets"] == [".docker.io"]


def test_azure_keeps_rule_order_as_priorities_and_actions(tmp_path: Path) -> None:
    path, policy = write(tmp_path, LISTED)
    template = json.loads(render("azure-firewall", spec_from_file(path, policy)))
    collections = template["resources"][0]["properties"]["ruleCollections"]
    assert [(c["priority"], c["action"]["type"], c["rules"][0]["targetFqdns"])
            for c in collections] == [
        (100, "Deny", ["registry.bluemix.net"]),
        (110, "Allow", ["icr.io", "registry.bluemix.net", "registry.ng.bluemix.net",
                        "*.icr.io"]),
    ]
    assert collections[1]["rules"][0]["sourceAddresses"] == ["10.240.0.0/24", "10.240.1.17/32"]
    assert collections[1]["rules"][0]["protocols"] == [{"protocolType": "Https", "port": 443}]
    path, policy = write(tmp_path, LISTED.replace("default: deny", "default: allow"), "a.yaml")
    with pytest.raises(ExportRefused, match="default: allow cannot be expressed"):
        render("azure-firewall", spec_from_file(path, policy))


def test_envoy_chains_pick_names_then_sources(tmp_path: Path) -> None:
    path, policy = write(tmp_path, RICH)
    config = yaml.safe_load(render("envoy", spec_from_file(path, policy)))
    listeners = {lst["name"]: lst for lst in config["static_resources"]["listeners"]}
    assert sorted(listeners) == ["portcullis_443", "portcullis_8443"]
    for listener in listeners.values():
        seen = set()
        for chain in listener["filter_chains"]:
            match = chain.get("filter_chain_match", {})
            key = (tuple(match.get("server_names", ())),
                   tuple((r["address_prefix"], r["prefix_len"])
                         for r in match.get("source_prefix_ranges", ())))
            assert key not in seen, f"Envoy rejects two chains with the same match: {key}"
            seen.add(key)
            assert chain["filters"][-1]["name"] == "envoy.filters.network.tcp_proxy"
        assert listener["filter_chains"][-1] == {
            "name": "other-names", "filters": listener["filter_chains"][-1]["filters"]}
        assert listener["filter_chains"][-1]["filters"][0]["name"] == "envoy.filters.network.rbac"


# --- headers and schemas ------------------------------------------------------------------


def _header_fields(fmt: str, text: str) -> str:
    if fmt == "aws-network-firewall":
        doc = json.loads(text)
        return doc["Description"] + json.dumps(doc["Tags"])
    if fmt == "azure-firewall":
        return json.dumps(json.loads(text)["metadata"])
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_export_names_its_source_hash_and_date(tmp_path: Path, fmt: str) -> None:
    source = LISTED if fmt in LIST_FORMATS else RICH
    path, policy = write(tmp_path, source)
    text = render(fmt, spec_from_policy(policy, origin=f"policy {path}",
                                        data=path.read_bytes(), generated=GENERATED))
    header = _header_fields(fmt, text)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert str(path) in header
    assert (digest if fmt != "aws-network-firewall" else digest[:16]) in header
    assert GENERATED in header
    if fmt in ("cilium", "calico"):
        for doc in yaml.safe_load_all(text):
            assert doc["metadata"]["annotations"]["portcullis.io/source-sha256"] == digest


def test_rule_names_cannot_inject_lines_into_text_formats(tmp_path: Path) -> None:
    text = LISTED.replace("name: ibm", 'name: "ibm\\nhttp_access allow all"')
    path, policy = write(tmp_path, text)
    for fmt in ("squid", "haproxy"):
        out = render(fmt, spec_from_file(path, policy))
        assert not any(line.strip() == "http_access allow all" for line in out.splitlines())
        assert "ibm\\x0ahttp_access allow all" in out


@pytest.mark.parametrize(("fmt", "schema"), [
    ("cilium", "cilium-networkpolicy.json"),
    ("calico", "calico-globalnetworkpolicy.json"),
    ("envoy", "envoy-bootstrap.json"),
    ("aws-network-firewall", "aws-network-firewall-rulegroup.json"),
    ("azure-firewall", "azure-firewall-rulecollectiongroup.json"),
])
def test_structured_exports_match_the_vendor_schemas(
    tmp_path: Path, fmt: str, schema: str
) -> None:
    path, policy = write(tmp_path, RICH if fmt == "envoy" else LISTED)
    text = render(fmt, spec_from_file(path, policy))
    docs = list(yaml.safe_load_all(text)) if fmt != "aws-network-firewall" else [json.loads(text)]
    assert docs
    for doc in docs:
        assert schema_errors(schema, doc) == []
    # The schema is not vacuous: a misspelt field and a bad value fail it.
    broken = json.loads(json.dumps(docs[0]))
    broken["spce" if "spec" in broken else "Capacty"] = {}
    assert schema_errors(schema, broken)


def test_catalog_selection_exports_pass_their_schemas() -> None:
    runner = CliRunner()
    for fmt, schema in [("cilium", "cilium-networkpolicy.json"),
                        ("calico", "calico-globalnetworkpolicy.json"),
                        ("azure-firewall", "azure-firewall-rulecollectiongroup.json")]:
        result = runner.invoke(main, ["domains", "--all-regions", "--format", fmt])
        assert result.exit_code == 0, result.output
        for doc in yaml.safe_load_all(result.stdout):
            assert schema_errors(schema, doc) == []
        assert "portcullis domains (all_regions=True registry=ibm)" in result.stdout


# --- command line -------------------------------------------------------------------------


def test_export_command_writes_the_file_and_refuses_with_exit_2(tmp_path: Path) -> None:
    path, _ = write(tmp_path, RICH)
    runner = CliRunner()
    out = tmp_path / "squid.conf"
    result = runner.invoke(main, ["export", "-c", str(path), "--format", "squid", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().rstrip().endswith("http_access deny all")
    result = runner.invoke(main, ["export", "-c", str(path), "--format", "cilium"])
    assert result.exit_code == 2
    assert "cannot export to cilium" in result.output and "no-germany" in result.output
    result = runner.invoke(main, ["export", "-c", str(path), "--format", "nginx",
                                  "--option", "colour=blue"])
    assert result.exit_code == 2 and "unknown option colour" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{name: r, from: [x], to: ['*']}]\n")
    result = runner.invoke(main, ["export", "-c", str(bad), "--format", "squid"])
    assert result.exit_code == 2 and "invalid policy" in result.output


def test_domains_refusal_exits_2_with_the_reason() -> None:
    result = CliRunner().invoke(main, ["domains", "--region", "us-south", "--wildcards",
                                       "--format", "aws-network-firewall"])
    assert result.exit_code == 2
    assert "'.icr.io' also matches 'icr.io'" in result.output
