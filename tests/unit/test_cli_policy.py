"""`validate` and `explain` as a user types them: output and exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from portcullis.cli import main

POLICY = textwrap.dedent(
    """\
    version: 1
    sources:
      workers: [10.240.0.0/24]
    rules:
      - name: ibm-registry
        from: [workers]
        to:
          - catalog: ibm-container-registry
            regions: [us-south]
        ports: [443]
    resolver:
      hosts: {us.icr.io: [169.254.169.254], dd0.icr.io: [158.175.0.10]}
    """
)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", "-c", _write(tmp_path, POLICY)])
    assert ok.exit_code == 0
    assert "valid: 1 rules, 5 destinations, 1 source groups" in ok.output  # dd4, dd6 retired
    bad = runner.invoke(
        main, ["validate", "-c", _write(tmp_path, POLICY.replace("us-south", "mars-1"))]
    )
    assert bad.exit_code == 2
    assert "line 8: rules[0].to[0]" in bad.output and "mars-1" in bad.output


def test_explain_allowed_with_address_checks(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["explain", "-c", _write(tmp_path, POLICY), "--from", "10.240.0.9",
               "--to", "dd0.icr.io"]
    )
    assert result.exit_code == 0, result.output
    assert "=> rule 'ibm-registry' (allow): matches: dd0.icr.io by dd0.icr.io" in result.output
    assert "resolve  hosts: 158.175.0.10" in result.output
    assert "ok   158.175.0.10: public" in result.output


def test_explain_metadata_address_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["explain", "-c", _write(tmp_path, POLICY), "--from", "10.240.0.9",
               "--to", "us.icr.io:443", "--json"]
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert (data["decision"], data["reason"], data["rule"]) == (
        "deny", "address_forbidden", "ibm-registry")
    [check] = data["resolution"]["checks"]
    assert check["class"] == "link_local" and check["allowed"] is False


def test_explain_denials_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    path = _write(tmp_path, POLICY)
    denied = runner.invoke(main, ["explain", "-c", path, "--from", "10.9.9.9", "--to", "x.io"])
    assert denied.exit_code == 1
    assert "decision DENY (reason: source_unknown)" in denied.output
    bad = runner.invoke(main, ["explain", "-c", path, "--from", "nope", "--to", "us.icr.io"])
    assert bad.exit_code == 2 and "not an IP address" in bad.output
    bad_port = runner.invoke(main, ["explain", "-c", path, "--from", "10.240.0.9",
                                    "--to", "us.icr.io:0"])
    assert bad_port.exit_code == 2


def test_serve_on_a_busy_address_exits_2_naming_it(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    policy = _write(tmp_path, f"version: 1\nlisten:\n  explicit: 127.0.0.1:{port}\n"
                              "  admin: 127.0.0.1:0\n")
    log = tmp_path / "log.jsonl"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "portcullis.cli", "serve", "-c", policy, "--log", str(log)],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        busy.close()
    assert done.returncode == 2
    message = f"cannot listen on 127.0.0.1:{port} (explicit): Address already in use"
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    [record] = [json.loads(line) for line in log.read_text().splitlines()]
    assert (record["event"], record["msg"]) == ("error", message)
