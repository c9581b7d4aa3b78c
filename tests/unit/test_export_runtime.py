"""`portcullis export` and what Portcullis does at run time: `inspect:` is refused
by every format; a parent proxy and PROXY protocol are refused by the proxies
and a warning on stderr for the network firewalls; quotas are a warning
everywhere (tools/export/runtime.py, docs/decisions.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from portcullis.cli import main
from portcullis.tools.export import FORMATS
from portcullis.tools.export.runtime import PROXIES

BASE = """\
version: 1
sources:
  workers: [10.240.0.0/24]
rules:
  - name: images
    from: [workers]
    to: [us.icr.io]
{rule_extra}
  - name: delivery
    from: [workers]
    to: [dd0.icr.io]
{top}
"""
FEATURES = {
    "inspect": ("    inspect: {repositories: ['platform/**']}",
                "tls_inspection: {ca_cert: /x/ca.pem, ca_key: /x/ca-key.pem}",
                "rule 'images' inspect"),
    "parent": ("", "upstream_proxy: http://10.1.2.3:3128", "upstream_proxy"),
    "rule-parent": ("    upstream_proxy: http://10.1.2.3:3128", "", "rule 'images' upstream_proxy"),
    "proxy-protocol": ("", "listen: {proxy_protocol: {explicit: {from: [10.0.0.5/32]}}}",
                       "listen.proxy_protocol.explicit"),
    "quota": ("", "quotas: {workers: {max_tunnels: 4, rate: 2}}", "quotas.workers"),
}
REFUSED_BY = {"inspect": set(FORMATS), "parent": PROXIES, "rule-parent": PROXIES,
              "proxy-protocol": PROXIES, "quota": set()}


def export(tmp_path: Path, feature: str, fmt: str) -> tuple[int, str, str]:
    rule_extra, top, _ = FEATURES[feature]
    policy = tmp_path / f"{feature}.yaml"
    policy.write_text(BASE.format(rule_extra=rule_extra, top=top))
    result = CliRunner().invoke(main, ["export", "-c", str(policy), "--format", fmt])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_each_runtime_feature_is_refused_or_named_on_stderr(tmp_path: Path, feature: str,
                                                            fmt: str) -> None:
    code, out, err = export(tmp_path, feature, fmt)
    field = FEATURES[feature][2]
    if fmt in REFUSED_BY[feature]:
        assert (code, out) == (2, ""), err
        assert err.startswith(f"cannot export to {fmt}:"), err
        assert f"  {field}: " in err, err
    else:
        assert code == 0, err
        assert "dd0.icr.io" in out
        warnings = [line for line in err.splitlines() if line.startswith("portcullis export:")]
        assert len(warnings) == 1 and f"warning: {field} " in warnings[0], err
        assert "is not exported" in warnings[0]


def test_a_rule_that_dials_directly_is_not_a_parent_problem(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    # A parent for the policy, but the one allow rule says `direct`.
    text = BASE.format(rule_extra="    upstream_proxy: direct",
                       top="upstream_proxy: http://10.1.2.3:3128")
    policy.write_text(text.replace("    to: [dd0.icr.io]\n", "    to: [dd0.icr.io]\n"
                                   "    action: deny\n"))
    result = CliRunner().invoke(main, ["export", "-c", str(policy), "--format", "squid"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_the_parent_credentials_never_reach_the_message(tmp_path: Path) -> None:
    secret = tmp_path / "cred"
    secret.write_text("corp:hunter2-s3cret\n")
    policy = tmp_path / "p.yaml"
    policy.write_text(BASE.format(rule_extra="", top=f"upstream_proxy: {{url: "
                                  f"'http://10.1.2.3:3128', credentials: {secret}}}"))
    refused = CliRunner().invoke(main, ["export", "-c", str(policy), "--format", "squid"])
    warned = CliRunner().invoke(main, ["export", "-c", str(policy), "--format", "cilium"])
    assert refused.exit_code == 2 and "http://10.1.2.3:3128" in refused.stderr
    assert warned.exit_code == 0 and "http://10.1.2.3:3128" in warned.stderr
    assert "hunter2" not in refused.stderr + warned.stderr + warned.stdout
