"""The policy file: models, defaults, and errors that name file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from portcullis.basics.errors import PolicyError
from portcullis.basics.hostport import parse_hostport
from portcullis.config import load_policy, parse_policy

GOOD = textwrap.dedent(
    """\
    version: 1
    mode: report
    listen:
      explicit: 0.0.0.0:3128
      transparent: "[::]:3129"
      admin: 127.0.0.1:9090
    sources:
      workers: [10.240.0.0/24, 10.240.1.17/32, "fd00::/64"]
    rules:
      - name: ibm-registry
        from: [workers, 192.168.7.0/24]
        to: ["*.icr.io", us.icr.io, 203.0.113.0/24]
        ports: [443]
        action: allow
        resolves_to: [198.51.100.0/24]
    default: deny
    resolver:
      servers: ["127.0.0.1:5353"]
      timeout: 1.5
      hosts: {US.ICR.IO.: [127.0.0.2]}
      allow_ranges: [127.0.0.0/8]
    limits: {max_connections: 100, header_timeout: 5}
    """
)


def test_good_policy_loads() -> None:
    policy = parse_policy(GOOD)
    assert policy.mode == "report"
    assert policy.rules[0].from_ == ["workers", "192.168.7.0/24"]
    assert str(policy.sources["workers"][2]) == "fd00::/64"
    assert list(policy.resolver.hosts) == ["us.icr.io"]
    assert policy.limits.max_connections == 100
    assert policy.limits.header_bytes == 16384  # default kept
    assert policy.listen.transparent == "[::]:3129"


def test_defaults_are_safe() -> None:
    policy = parse_policy("version: 1\n")
    assert policy.default == "deny"
    assert policy.mode == "enforce"
    assert policy.listen.explicit == "127.0.0.1:3128"
    assert policy.listen.admin == "127.0.0.1:9090"


def test_embedded_default_policy_allows_ibm_only() -> None:
    policy = load_policy(None)
    assert [r.name for r in policy.rules] == ["ibm-container-registry"]
    assert policy.default == "deny"


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "p.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\n", "1: version: Input should be 1"),
        ("version: 1\nmod: report\n", "2: mod: unknown field"),
        ("version: 1\nmode: audit\n", "2: mode: Input should be 'enforce' or 'report'"),
        (
            "version: 1\nsources:\n  w: [10.0.0.1/24]\n",
            "3: sources.w[0]: '10.0.0.1/24' has host bits set; write 10.0.0.0/24",
        ),
        (
            "version: 1\nrules:\n  - name: r\n    from: [10.0.0.0/8]\n    to:\n      - ok.example\n"
            "      - .example.com\n",
            "7: rules[0].to[1]: '.example.com' is ambiguous; write 'example.com' for the name"
            " itself and '*.example.com' for the names under it",
        ),
        (
            "version: 1\nrules:\n  - name: r\n    from: [10.0.0.0/8]\n    to: ['*']\n",
            "5: rules[0].to[0]: '*' would match every name",
        ),
        (
            "version: 1\nrules:\n  - name: r\n    from: [10.0.0.0/8]\n    to: [x.example]\n"
            "    ports: [0]\n",
            "6: rules[0].ports[0]: Input should be greater than or equal to 1",
        ),
        (
            "version: 1\nrules:\n  - name: r\n    from: [workers]\n    to: [x.example]\n",
            "unknown source group 'workers'",
        ),
        (
            "version: 1\nrules:\n  - name: r\n    from: [10.0.0.0/8]\n    to: [x.example]\n"
            "    action: permit\n",
            "6: rules[0].action: Input should be 'allow' or 'deny'",
        ),
        ("version: 1\nlisten:\n  explicit: 3128\n", "3: listen.explicit"),
        ("version: 1\nlisten:\n  explicit: 'localhost'\n", "write a listen address as host:port"),
        ("version: 1\nrules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_errors_name_line_and_field(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(expected in p for p in problems), problems


def test_error_string_names_file() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("version: 1\nmod: x\n", "/etc/portcullis/policy.yaml")
    assert str(info.value).startswith("/etc/portcullis/policy.yaml:2: mod: unknown field")


def test_every_error_is_listed() -> None:
    problems = _problems("version: 3\nmode: x\nfoo: 1\n")
    assert len(problems) == 3


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0.0.0:3128", ("0.0.0.0", 3128)), ("[::1]:9090", ("::1", 9090)), (":80", ("0.0.0.0", 80))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected
