"""`portcullis nftables`: the generated ruleset is valid nft (checked by `nft -c`), says
what it must, and does what it says in a namespace of the test's own (same-host set-up)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.netns import Namespaces, inside, namespaces

from portcullis.basics.errors import NftablesError
from portcullis.config import parse_policy
from portcullis.net.sockets import SOCKET_MARK
from portcullis.tools.nftables import load, ruleset

CLI = [sys.executable, "-m", "portcullis.cli"]


def policy(transparent: str | None = "0.0.0.0:3129", *, rules: list[dict[str, Any]] | None = None,
           sources: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "listen": {"explicit": "127.0.0.1:3128", "transparent": transparent},
        "sources": {"workers": sources or ["10.240.0.0/24", "fd00:1::/64"]},
        "rules": rules if rules is not None else [
            {"name": "icr", "from": ["workers"], "to": ["*.icr.io"], "ports": [443]},
        ],
        **extra,
    }


def render(doc: dict[str, Any], **kwargs: Any) -> str:
    return ruleset(parse_policy(yaml.safe_dump(doc)), **kwargs)


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_default_ruleset_is_valid_nft_and_redirects_workers_443() -> None:
    text = render(policy())
    load(text, check_only=True)
    lines = rule_lines(text)
    assert "ip saddr @workers4 tcp dport { 443 } redirect to :3129" in lines
    # Once in prerouting (gateway), once in output (same host).
    assert lines.count("ip saddr @workers4 tcp dport { 443 } redirect to :3129") == 2
    assert lines.count(f"meta mark 0x{SOCKET_MARK:08x} return") == 2
    assert "ip saddr @workers4 udp dport 443 drop" in lines
    assert "ip6 saddr @workers6 udp dport 443 drop" in lines
    # 0.0.0.0 does not accept IPv6: IPv6 workers are refused, never let past.
    assert "ip6 saddr @workers6 tcp dport { 443 } reject with tcp reset" in lines
    assert not any("ip6 saddr" in line and "redirect" in line for line in lines)
    # Loading twice replaces the table instead of stacking a second copy.
    assert lines[:2] == ["table inet portcullis", "delete table inet portcullis"]


def test_port_80_is_redirected_only_when_an_allow_rule_names_it() -> None:
    allow80 = [{"name": "icr", "from": ["workers"], "to": ["*.icr.io"], "ports": [443, 80]}]
    deny80 = [
        {"name": "no", "from": ["workers"], "to": ["x.icr.io"], "ports": [80], "action": "deny"},
        {"name": "icr", "from": ["workers"], "to": ["*.icr.io"], "ports": [443]},
    ]
    assert "tcp dport { 80, 443 } redirect" in render(policy(rules=allow80))
    text = render(policy(rules=deny80))
    assert "tcp dport { 443 } redirect" in text and "80" not in text.replace("0x", "")


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_dual_stack_listener_redirects_both_families() -> None:
    text = render(policy("[::]:3129"))
    load(text, check_only=True)
    lines = rule_lines(text)
    assert "ip6 saddr @workers6 tcp dport { 443 } redirect to :3129" in lines
    assert "ip saddr @workers4 tcp dport { 443 } redirect to :3129" in lines
    assert not any("reject" in line for line in lines)


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_specific_listen_address_is_a_dnat_to_it_and_uid_is_exempt() -> None:
    text = render(policy("10.240.0.1:3129", sources=["10.240.0.0/24"]), exempt_uid=998)
    load(text, check_only=True)
    lines = rule_lines(text)
    assert "ip saddr @workers4 tcp dport { 443 } dnat ip to 10.240.0.1:3129" in lines
    assert lines.count("meta skuid 998 return") == 2
    assert "set workers6 {" not in lines


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_overlapping_and_inline_sources_are_merged_so_nft_accepts_them() -> None:
    rules = [{"name": "icr", "from": ["workers", "10.240.0.0/16"], "to": ["*.icr.io"]}]
    text = render(policy(rules=rules, sources=["10.240.0.0/24", "10.240.1.17/32"]))
    load(text, check_only=True)
    assert "elements = { 10.240.0.0/16 }" in text


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (policy(None), "no transparent listener"),
        (policy("0.0.0.0:0"), "port 0"),
        (policy(rules=[]), "no rule names a client network"),
    ],
)
def test_what_cannot_be_redirected_is_an_error(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(NftablesError, match=message):
        render(doc)


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_nft_rejects_a_broken_ruleset() -> None:
    with pytest.raises(NftablesError, match="nft -f failed"):
        load("table inet portcullis {\n chain x { nonsense }\n}\n", check_only=True)


def test_cli_prints_and_refuses_with_exit_2(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(policy()))
    bad.write_text(yaml.safe_dump(policy(None)))
    printed = subprocess.run([*CLI, "nftables", "-c", str(good)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render(policy()).replace("the policy", str(good))
    refused = subprocess.run([*CLI, "nftables", "-c", str(bad)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "listen: {transparent: 0.0.0.0:3129}" in refused.stderr


@pytest.fixture(scope="module")
def same_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespaces]:
    """A namespace where loopback clients are the workers, rules loaded by `--apply`."""
    path = tmp_path_factory.mktemp("nft") / "policy.yaml"
    path.write_text(yaml.safe_dump(policy(sources=["127.0.0.0/8"])))
    with namespaces("host") as ns:
        for _ in range(2):  # a second --apply replaces, it does not add
            out = ns.exec("host", [*CLI, "nftables", "-c", str(path), "--apply"])
            assert out.strip() == "loaded table inet portcullis"
        yield ns


@pytest.mark.privileged  # a network namespace of its own
def test_apply_loads_one_table(same_host: Namespaces) -> None:
    listed = same_host.exec("host", ["nft", "list", "ruleset"])
    assert listed.count("table inet portcullis") == 1
    assert listed.count("redirect to :3129") == 2


def _listen(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen()
    sock.settimeout(5)
    return sock


@pytest.mark.privileged  # a network namespace of its own
def test_same_host_redirect_exempts_marked_sockets_and_drops_quic(same_host: Namespaces) -> None:
    with inside(same_host.host):
        proxy, origin = _listen(("0.0.0.0", 3129)), _listen(("127.0.0.9", 443))
        worker, marked = socket.socket(), socket.socket()
        quic, quic_marked, quic_server = (socket.socket(type=socket.SOCK_DGRAM) for _ in range(3))
    with proxy, origin, worker, marked, quic, quic_marked, quic_server:
        worker.settimeout(5)
        worker.connect(("127.0.0.9", 443))
        conn, _ = proxy.accept()  # the worker's connection went to the listener
        conn.close()
        marked.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK)
        marked.settimeout(5)
        marked.connect(("127.0.0.9", 443))
        conn, _ = origin.accept()  # Portcullis's own connection went where it asked
        conn.close()
        quic_server.bind(("127.0.0.9", 443))
        quic_server.settimeout(1)
        # A local sender learns of the output drop at once: EPERM.
        with pytest.raises(PermissionError):
            quic.sendto(b"worker", ("127.0.0.9", 443))
        quic_marked.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK)
        quic_marked.sendto(b"marked", ("127.0.0.9", 443))
        assert quic_server.recv(100) == b"marked"
        with pytest.raises(TimeoutError):
            quic_server.recv(100)


@pytest.mark.privileged  # nft -c asks the kernel: CAP_NET_ADMIN
def test_the_documented_example_policy_gives_a_valid_ruleset() -> None:
    example = Path(__file__).parents[2] / "deploy" / "nftables" / "transparent-policy.yaml"
    text = ruleset(parse_policy(example.read_text(), str(example)))
    load(text, check_only=True)
    assert "ip saddr @workers4 tcp dport { 443 } redirect to :3129" in rule_lines(text)
