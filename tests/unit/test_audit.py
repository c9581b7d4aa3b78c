"""`portcullis audit FILE`: digests per client, refusals by reason (issue 14, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from portcullis.basics.vocabulary import Decision, Reason
from portcullis.cli import main
from portcullis.observe.audit import AuditEvent
from portcullis.observe.log import DecisionLog

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _event(client: str, **kw: object) -> AuditEvent:
    base: dict[str, object] = dict(time=1764561600.0, id="c-1", client=client,
                                   registry="us.icr.io", rule="r", method="GET",
                                   path="/v2/ns/a/manifests/1", decision=Decision.ALLOW,
                                   reason=Reason.RULE_ALLOW, status=200)
    base.update(kw)
    return AuditEvent(**base)  # type: ignore[arg-type]


def test_audit_summarises_the_log_the_proxy_writes(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path))
    log.log_info("listening")
    for reference in ("1", "1", D1):
        log.audit(_event("10.0.0.5", repository="ns/a", reference=reference, digest=D1,
                         size=500, media_type="application/vnd.oci.image.manifest.v1+json"))
    log.audit(_event("10.0.0.6", repository="ns/b", reference="2", digest=D2))
    log.audit(_event("10.0.0.6", decision=Decision.DENY, reason=Reason.REPOSITORY_DENIED,
                     status=403, repository="ns/c", message="repository ns/c is not allowed"))
    log.close()
    text = CliRunner().invoke(main, ["audit", str(path)])
    assert text.exit_code == 0, text.output
    assert f"us.icr.io/ns/a@{D1}  refs 1,{D1}  x3" in text.output
    assert "refused: repository_denied x1" in text.output
    data = json.loads(CliRunner().invoke(main, ["audit", "--json", str(path)]).output)
    assert [c["client"] for c in data] == ["10.0.0.5", "10.0.0.6"]
    assert data[1]["pulled"][0]["digest"] == D2 and data[1]["refused"] == {"repository_denied": 1}


def test_audit_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"event":"audit"}\nnot json\n')
    result = CliRunner().invoke(main, ["audit", str(path)])
    assert result.exit_code == 2 and f"{path}:2: not a JSON line" in result.output
    missing = CliRunner().invoke(main, ["audit", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_two_logins_behind_one_address_are_summarised_apart(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path))
    log.audit(_event("10.0.0.5", repository="ns/a", reference="1", digest=D1,
                     identity="runner-1", balancer="10.0.0.9:4000"))
    log.audit(_event("10.0.0.5", repository="ns/b", reference="2", digest=D2,
                     identity="runner-2"))
    log.close()
    line = json.loads(path.read_text().splitlines()[0])
    assert (line["identity"], line["balancer"]) == ("runner-1", "10.0.0.9:4000")
    text = CliRunner().invoke(main, ["audit", str(path)])
    assert text.exit_code == 0, text.output
    assert f"client 10.0.0.5 (runner-1)\n  us.icr.io/ns/a@{D1}" in text.output
    assert f"client 10.0.0.5 (runner-2)\n  us.icr.io/ns/b@{D2}" in text.output
    data = json.loads(CliRunner().invoke(main, ["audit", "--json", str(path)]).output)
    assert [(c["client"], c["identity"]) for c in data] == [
        ("10.0.0.5", "runner-1"), ("10.0.0.5", "runner-2")]
