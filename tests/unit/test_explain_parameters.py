"""`portcullis explain` and admin `/explain` take the same parameters (`path`,
`method`, `identity` besides `from`, `to`, `sni`) and answer the same: the JSON
of one is the JSON of the other, and a refused value is named the same way
(`--path ...`, exit 2; `query parameter 'path' ...`, 400)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from portcullis.basics.errors import BadParameter
from portcullis.cli import main
from portcullis.config import load_policy
from portcullis.config.access import Auth
from portcullis.observe.admin import AdminServer
from portcullis.observe.explain_query import ExplainQuery, parse_explain_query
from portcullis.observe.metrics import Metrics
from portcullis.proxy.explaining import explain_for_admin
from portcullis.proxy.gate import Gate
from portcullis.proxy.identify import Authenticator

pytestmark = pytest.mark.timeout(60)

POLICY = """\
version: 1
sources:
  workers: [10.0.0.0/8]
auth:
  passwords: {passwd}
identities:
  ci-runners:
    names: [runner-1]
rules:
  - name: platform
    from: [workers]
    to: [us.icr.io]
    inspect: {{repositories: ["platform/**"]}}
  - name: ci
    from: [ci-runners]
    to: [quay.io]
tls_inspection: {{ca_cert: /x/ca.pem, ca_key: /x/ca-key.pem}}
resolver:
  allow_ranges: [192.0.2.0/24]
  hosts: {{us.icr.io: [192.0.2.10], quay.io: [192.0.2.20]}}
"""

# (parameters, allowed, what the JSON says)
CASES = [
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/platform/app/manifests/1"},
     True, ("allow", "rule_allow", True)),
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/other/app/manifests/1"},
     False, ("allow", "repository_denied", False)),
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/platform/app/blobs/uploads/",
      "method": "post"}, False, ("allow", "method_denied", False)),
    ({"from": "192.168.1.5", "to": "quay.io", "identity": "runner-1"}, True,
     ("allow", "rule_allow", None)),
    ({"from": "192.168.1.5", "to": "quay.io", "identity": "someone-else"}, False,
     ("deny", None, None)),
]

# (parameters, the parameter named)
BAD = [
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/a/../b"}, "path"),
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "v2/x"}, "path"),
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/", "method": "FROB"}, "method"),
    ({"from": "10.1.2.3", "to": "us.icr.io", "path": "/v2/", "method": "CONNECT"}, "method"),
    ({"from": "10.1.2.3", "to": "us.icr.io", "method": "POST"}, "method"),
    ({"from": "10.1.2.3", "to": "quay.io", "identity": "a b"}, "identity"),
    ({"from": "10.1.2.3", "to": "quay.io", "identity": "x\x01"}, "identity"),
    ({"from": "not-an-ip", "to": "quay.io"}, "from"),
    ({"from": "10.1.2.3", "to": "quay.io:99999"}, "to"),
]
OPTION = {"from": "--from", "to": "--to", "path": "--path", "method": "--method",
          "identity": "--identity", "sni": "--sni"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(passwd=passwd))
    return path


def cli(policy_file: Path, params: dict[str, str]) -> tuple[int, str, str]:
    args = ["explain", "-c", str(policy_file), "--json"]
    for name, value in params.items():
        args += [OPTION[name], value]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def admin(policy_file: Path, queries: list[str]) -> list[tuple[int, dict[str, object]]]:
    gate = Gate(load_policy(str(policy_file)), authenticator=Authenticator(Auth()))

    async def run() -> list[tuple[int, dict[str, object]]]:
        server = AdminServer(metrics=Metrics(), ready=lambda: True,
                             explain=lambda query: explain_for_admin(gate, query))
        await server.start("127.0.0.1", 0)
        answers = []
        try:
            for query in queries:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
                writer.write(f"GET /explain?{query} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                data = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                head, _, body = data.partition(b"\r\n\r\n")
                answers.append((int(head.split()[1]), json.loads(body)))
        finally:
            await server.close()
        return answers

    return asyncio.run(run())


def test_cli_and_admin_answer_the_same(policy_file: Path) -> None:
    served = admin(policy_file, [urllib.parse.urlencode(p) for p, _, _ in CASES])
    for (params, allowed, (decision, reason, request_allowed)), (status, body) in zip(
            CASES, served, strict=True):
        code, out, err = cli(policy_file, params)
        assert code == (0 if allowed else 1), (params, err)
        assert status == 200
        assert json.loads(out) == body, params
        assert body["decision"] == decision, params
        if "path" in params:
            request = body["request"]
            assert isinstance(request, dict)
            assert (request["reason"], request["allowed"]) == (reason, request_allowed)
            assert request["method"] == params.get("method", "GET").upper()
        else:
            assert "request" not in body
            if reason is not None:
                assert body["reason"] == reason


def test_a_bad_value_is_named_the_same_by_both(policy_file: Path) -> None:
    served = admin(policy_file, [urllib.parse.urlencode(p) for p, _ in BAD])
    for (params, name), (status, body) in zip(BAD, served, strict=True):
        code, out, err = cli(policy_file, params)
        assert (code, out) == (2, ""), params
        assert err.startswith(f"{OPTION[name]} "), (params, err)
        assert status == 400, (params, body)
        message = str(body["error"])
        assert message.startswith(f"query parameter '{name}' "), (params, message)
        # The same words after the name: one check, two spellings of its name.
        assert message.removeprefix(f"query parameter '{name}' ") == \
            err.strip().removeprefix(f"{OPTION[name]} "), params


@pytest.mark.parametrize(("query", "name", "needle"), [
    ({"from": ["10.0.0.1"], "to": ["a.example"], "paht": ["/v2/"]}, "paht", "unknown"),
    ({"from": ["10.0.0.1"], "to": ["a.example"], "path": ["/v2/", "/v2/x/tags/list"]},
     "path", "repeated"),
    ({"from": ["10.0.0.1"], "to": ["a.example"], "identity": [""]}, "identity", "empty"),
    ({"from": ["10.0.0.1"], "to": ["a.example"], "method": [""]}, "method", "empty"),
])
def test_admin_only_shapes_are_refused(query: dict[str, list[str]], name: str,
                                       needle: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_explain_query(query)
    assert caught.value.parameter == name and needle in str(caught.value)


def test_a_checked_query_keeps_what_the_proxy_would_see() -> None:
    query = ExplainQuery.of("::ffff:10.0.0.1", "us.icr.io", path="/v2/ns/app/tags/list",
                            method="head", identity="runner-1")
    # The proxy sees a mapped IPv4 client as IPv4 (basics/ip.peer_address).
    assert (str(query.source), query.method, query.identity) == ("10.0.0.1", "HEAD", "runner-1")
    assert ExplainQuery.of("10.0.0.1", "x").method == "GET"
