"""One line per failure for `portcullis check`: the name, what happened, the fix.

The fix names what to allow: the name itself, or the registry's recommended
wildcard when a catalog has one that covers it (`dd0.icr.io or *.icr.io`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from portcullis import catalog
from portcullis.basics.vocabulary import Reason
from portcullis.tools.check_report import Diagnosis, NameReport, PullStep, Report, Status, Step
from portcullis.tools.netprobe import Kind


@cache
def allow_hint(name: str) -> str:
    """`name`, or `name or *.suffix` when a catalog recommends a wildcard covering it."""
    for cat_id in catalog.catalog_ids():
        wildcard = catalog.load_catalog(cat_id).covering_wildcard(name)
        if wildcard is not None:
            return f"{name} or {wildcard.name}"
    return name


def _proxy_refusal(target: str, name: str, port: int, step: Step | PullStep) -> str:
    hint = allow_hint(name)
    if step.reason is None:
        # Not Portcullis (no X-Portcullis-Reason): some other proxy's ACL.
        if "407" in step.detail:
            return (f"proxy wants authentication for {target}: put the credentials in the "
                    "proxy URL (http://user:password@proxy:port)")
        return f"proxy refused {target} ({step.detail}): allow {hint} in the proxy's ACL"
    rule = f", rule {step.rule}" if step.rule else ""
    head = f"proxy refused {target} (reason {step.reason}{rule})"
    fixes: dict[str, str] = {
        Reason.NO_RULE: f"add {hint} to the rule",
        Reason.RULE_DENY: f"rule {step.rule} denies it; allow {hint} in a rule above it",
        Reason.SOURCE_UNKNOWN: "this node's address is in no source group; add it under `sources:`",
        Reason.PORT_NOT_ALLOWED: f"add port {port} to the `ports:` of the rule that lists {name}",
        Reason.ADDRESS_FORBIDDEN: f"{name} resolves to an address Portcullis refuses (private, "
                             "loopback, link-local...); if that is intended, admit it with "
                             "`resolver.allow_ranges` or the rule's `resolves_to`",
        Reason.RESOLVES_OUTSIDE: f"{name} resolves outside the rule's `resolves_to`; widen it",
        Reason.DNS_FAILURE: f"the proxy cannot resolve {name}; fix the proxy's DNS",
    }
    fix = fixes.get(step.reason, f"run `portcullis explain --to {target}` on the proxy")
    return f"{head}: {fix}"


def explain(name: str, port: int, step: Step | PullStep, proxy: str | None) -> str:
    """The diagnosis line for a failed step on `name:port`."""
    target = f"{name}:{port}"
    hint = allow_hint(name)
    kind = step.kind
    detail = step.detail
    if step.step == "dns" or kind is Kind.DNS:
        return (f"DNS lookup of {name} failed ({detail}): this node cannot resolve it; check "
                "/etc/resolv.conf and that DNS to its resolver is allowed")
    if kind is Kind.PROXY_UNREACHABLE:
        return (f"cannot reach the proxy {proxy} ({detail}): check --proxy / HTTPS_PROXY "
                "and that this node may connect to the proxy")
    if kind is Kind.PROXY_TLS:
        return (f"{detail}: pass --proxy-ca FILE with the CA that signs the proxy's "
                f"certificate, and check that {proxy} serves TLS")
    if kind is Kind.PROXY_REFUSED:
        return _proxy_refusal(target, name, port, step)
    if kind is Kind.PROXY_UPSTREAM:
        if step.reason == Reason.PARENT_REFUSED:
            return (f"the parent proxy behind the proxy refused {target} ({detail}): allow "
                    f"{hint} in the parent's ACL, or check `upstream_proxy.credentials`")
        if step.reason == Reason.PARENT_FAILED:
            return (f"the proxy cannot use its parent proxy for {target} ({detail}): check "
                    "`upstream_proxy` and that the parent is up")
        if step.reason == Reason.DNS_FAILURE:
            return f"the proxy cannot resolve {name} ({detail}): fix the proxy's DNS"
        return (f"the proxy could not reach {target} ({detail}): a firewall between the "
                f"proxy and {name} blocks it; allow {hint} there")
    if step.step == "tls" or kind in (Kind.TLS, Kind.TLS_CERT):
        if kind is Kind.TLS_CERT:
            return (f"TLS to {name}: the certificate is not valid for it ({detail}): a "
                    f"TLS-inspecting proxy or a wrong address answers; exempt {name} from "
                    "inspection, or pass --ca FILE with the CA that signs it")
        if kind is Kind.TIMEOUT:
            return (f"TLS handshake with {name} timed out: a firewall that filters by SNI "
                    f"swallows it; allow {hint}")
        return (f"TLS handshake with {name} failed ({detail}): a firewall that filters by "
                f"SNI cuts it; allow {hint}")
    if kind is Kind.TIMEOUT:
        return f"TCP to {target} timed out: a firewall drops it; allow {hint}"
    if kind is Kind.REFUSED:
        return (f"TCP to {target} was refused: a firewall rejects it, or nothing listens "
                f"there; allow {hint}")
    if kind is Kind.UNREACHABLE:
        return f"TCP to {target} is unreachable ({detail}): a router or firewall rejects it; " \
               f"allow {hint}"
    if kind is Kind.RESET:
        return f"the connection to {target} was reset ({detail}): a firewall cuts it; " \
               f"allow {hint}"
    if kind is Kind.AUTH:
        return (f"{name} wants credentials ({detail}); the network path works: pass "
                "--user USER:PASSWORD (IBM Cloud: --user iamapikey:APIKEY)")
    return f"{name}: {step.step} failed: {detail}"


def _name_lines(report: Report) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    proxy_down = False
    for row in report.names:
        failed = row.failure
        if failed is not None:
            if failed.kind in (Kind.PROXY_UNREACHABLE, Kind.PROXY_TLS):
                if proxy_down:
                    continue  # one line for the proxy, not one per name
                proxy_down = True
            message = explain(row.name, row.port, failed, report.proxy)
            if row.bypass is not None:
                # The usual surprise: a registry name that NO_PROXY sends around the proxy.
                message += f" ({row.name} went direct: NO_PROXY entry {row.bypass!r})"
            out.append(Diagnosis("error", row.name, failed.kind, message, failed.reason))
        tls = row.step("tls")
        if tls is not None and tls.status is Status.WARN and row.cert is not None:
            out.append(Diagnosis("warning", row.name, None,
                                 f"the certificate of {row.name} expires in "
                                 f"{row.cert.days_left} days ({row.cert.not_after:%Y-%m-%d})"))
    return out


def _pull_lines(report: Report, rows: dict[str, NameReport]) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    for step in report.pull:
        if step.status is not Status.FAIL:
            continue
        host = step.host or (report.image or "").split("/")[0]
        row = rows.get(host)
        if row is not None and row.failure is not None and step.kind is not Kind.AUTH:
            continue  # the host's own row already says why
        port = row.port if row is not None else 443
        message = explain(host, port, step, report.proxy)
        if step.kind is Kind.HTTP:
            message = f"{step.step} {step.target}: {step.detail}"
        out.append(Diagnosis("error", host, step.kind, message, step.reason))
    return out


def diagnose(report: Report, patterns: Sequence[str] = ()) -> list[Diagnosis]:
    rows = {row.label: row for row in report.names}
    found = _name_lines(report) + _pull_lines(report, rows)
    unique = list(dict.fromkeys(found))  # a blob and its host may say the same thing
    if patterns:
        unique.append(Diagnosis("note", None, None,
                                "not probed (patterns, no single host): " + ", ".join(patterns)))
    return unique
