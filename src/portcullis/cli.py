"""The `portcullis` command line: commands only, the logic lives in the packages.

Exit codes: 0 ok, 1 a check failed or a request is denied, 2 usage or policy error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Sequence

import click

from portcullis import catalog
from portcullis.basics.errors import AuthorityError, LearnError, NftablesError, PolicyError
from portcullis.catalog import render
from portcullis.config import Policy, load_policy
from portcullis.policy.engine import Engine
from portcullis.tools import export as exporting

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="portcullis")
def main() -> None:
    """Portcullis: a Layer 7 egress firewall for container-registry traffic."""


# --- catalog commands: regions, domains ---


def _catalog_or_usage(registry: str) -> catalog.Catalog:
    try:
        return catalog.load_catalog(registry)
    except catalog.CatalogError as exc:
        raise click.UsageError(str(exc)) from None


# Renderers for `domains --format`. Firewall export formats (squid, nginx...)
# are added to this mapping before `domains` is defined: click copies the keys.
DOMAIN_FORMATS: dict[str, Callable[[Sequence[catalog.CatalogEntry]], str]] = {
    "text": render.entries_text,
    "json": render.entries_json,
    "csv": render.entries_csv,
}


class _ExportRefusedError(click.ClickException):
    """An export format cannot express the selection; exit 2 like a usage error."""

    exit_code = EXIT_USAGE


def _export_renderer(fmt: str) -> Callable[[Sequence[catalog.CatalogEntry]], str]:
    def render(entries: Sequence[catalog.CatalogEntry]) -> str:
        params = click.get_current_context().params
        chosen = " ".join(
            f"{k}={','.join(v) if isinstance(v, tuple) else v}"
            for k, v in sorted(params.items())
            if v and k != "fmt"
        )
        spec = exporting.spec_from_names(
            [entry.name for entry in entries], origin=f"portcullis domains ({chosen})"
        )
        try:
            return exporting.render(fmt, spec)
        except exporting.ExportRefused as exc:
            raise _ExportRefusedError(str(exc)) from None

    return render


DOMAIN_FORMATS.update({fmt: _export_renderer(fmt) for fmt in exporting.FORMATS})


@main.command()
@click.option("--registry", default="ibm", show_default=True, help="Catalog id or alias.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def regions(registry: str, fmt: str) -> None:
    """List a registry's regions: id, name in the doc, registry and deprecated address."""
    cat = _catalog_or_usage(registry)
    if fmt == "json":
        rows = [
            {
                "id": r.id,
                "name": r.name,
                "aliases": list(r.aliases),
                "registry": list(r.addresses),
                "deprecated": list(r.deprecated),
                "later": r.later,
            }
            for r in cat.regions
        ]
        click.echo(json.dumps(rows, indent=2))
    elif not cat.regions:
        click.echo(f"{cat.id} has no regions", err=True)
    else:
        click.echo(render.regions_text(cat.regions), nl=False)


def _parse_params(raw: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.UsageError(f"--param {item!r}: write --param key=value")
        key = key.strip()
        # A repeated key adds values, as a comma-separated list does.
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


@main.command()
@click.option("--registry", default="ibm", show_default=True, help="Catalog id or alias.")
@click.option(
    "--region", "region_list", multiple=True, help="Region id, doc name or host (repeatable)."
)
@click.option("--all-regions", is_flag=True, help="Every region of the registry.")
@click.option("--no-deprecated", is_flag=True, help="Leave out deprecated names.")
@click.option("--no-delivery", is_flag=True, help="Leave out delivery (blob redirect) hosts.")
@click.option("--china", is_flag=True, help="Add the hosts for users located in China.")
@click.option("--private", is_flag=True, help="Add private-network endpoints.")
@click.option("--wildcards", is_flag=True, help="Use the vendor's recommended wildcards.")
@click.option(
    "--param",
    "param_list",
    multiple=True,
    metavar="KEY=VALUE",
    help="Value for a placeholder such as <account> (repeatable).",
)
@click.option(
    "--format", "fmt", type=click.Choice(list(DOMAIN_FORMATS)), default="text", show_default=True
)
def domains(
    registry: str,
    region_list: tuple[str, ...],
    all_regions: bool,
    no_deprecated: bool,
    no_delivery: bool,
    china: bool,
    private: bool,
    wildcards: bool,
    param_list: tuple[str, ...],
    fmt: str,
) -> None:
    """Print the names a registry needs, one per line (or JSON, CSV)."""
    cat = _catalog_or_usage(registry)
    if region_list and all_regions:
        raise click.UsageError("give either --region or --all-regions, not both")
    # Only the region list of the doc is an informed choice; guessing "all"
    # would open more than a user who forgot --region meant to.
    if cat.regions and not region_list and not all_regions:
        raise click.UsageError(
            f"choose regions: --region ID (repeatable) or --all-regions; "
            f"'portcullis regions --registry {registry}' lists them"
        )
    include = [
        tag
        for tag, wanted in (
            ("deprecated", not no_deprecated),
            ("delivery", not no_delivery),
            ("china", china),
            ("private", private),
        )
        if wanted
    ]
    try:
        entries = catalog.select(
            cat,
            regions=list(region_list) or None,
            include=include,
            params=_parse_params(param_list),
            wildcards=wildcards,
        )
    except catalog.CatalogError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(DOMAIN_FORMATS[fmt](entries), nl=False)


# --- policy commands: validate, explain ---


def _load_or_exit(path: str | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        click.echo(f"invalid policy {exc.source}:", err=True)
        for problem in exc.problems:
            click.echo(f"  line {problem}" if problem[:1].isdigit() else f"  {problem}", err=True)
        raise SystemExit(EXIT_USAGE) from None


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Policy file to check.")
def validate(path: str) -> None:
    """Check a policy file; exit 0 when valid, 2 with every error listed."""
    policy = _load_or_exit(path)
    engine = Engine(policy)
    names = sum(len(rule.destinations) for rule in engine.rules)
    click.echo(
        f"{path}: valid: {len(engine.rules)} rules, {names} destinations, "
        f"{len(policy.sources)} source groups, mode {policy.mode}, default {policy.default}"
    )


@main.command()
@click.option("--from", "source", required=True, help="Client IP address.")
@click.option("--to", "target", required=True, help="HOST[:PORT] (port 443 when omitted).")
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--sni", help="The TLS server name the client would send (checked like the proxy).")
@click.option("--no-resolve", is_flag=True, help="Decide on the name only; skip DNS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain(source: str, target: str, path: str | None, sni: str | None, no_resolve: bool,
            as_json: bool) -> None:
    """Show the rule that decides, why earlier rules did not, and the address checks.

    Exit 0 when the connection would be allowed, 1 when denied, 2 on bad input.
    """
    from portcullis.proxy.explaining import explain_target
    from portcullis.proxy.gate import Gate

    policy = _load_or_exit(path)
    try:
        client = ipaddress.ip_address(source)
    except ValueError:
        click.echo(f"--from {source!r} is not an IP address", err=True)
        raise SystemExit(EXIT_USAGE) from None
    try:
        result = asyncio.run(
            explain_target(Gate(policy), client, target, sni=sni, resolve=not no_resolve)
        )
    except AuthorityError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())
    raise SystemExit(EXIT_OK if result.verdict.allowed else EXIT_DENIED)


# --- serving: serve ---


@main.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--log", "log_path", help="Decision log file (default: log.path, or stdout).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes sharing the listen ports (SO_REUSEPORT).")
@click.option("--no-uvloop", is_flag=True, help="Use asyncio's own event loop.")
def serve(path: str | None, log_path: str | None, workers: int, no_uvloop: bool) -> None:
    """Run the firewall."""
    from portcullis.proxy.run import serve_forever

    policy = _load_or_exit(path)
    raise SystemExit(
        serve_forever(policy, path, log_path=log_path, workers=workers, use_uvloop=not no_uvloop)
    )


# --- operator tools: check ---


def _resolve_overrides(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, address = item.partition("=")
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise click.UsageError(f"--resolve {item!r}: write NAME=ADDRESS") from None
        if not sep or not name.strip():
            raise click.UsageError(f"--resolve {item!r}: write NAME=ADDRESS")
        out.setdefault(name.strip().lower(), []).append(address.strip())
    return {name: tuple(addrs) for name, addrs in out.items()}


@main.command()
@click.option("--registry", help="Check the names of this registry catalog (ibm, ...).")
@click.option("--region", "region_list", multiple=True,
              help="Region id, doc name or host (repeatable; with --registry).")
@click.option("--china", is_flag=True, help="Add the hosts for users located in China.")
@click.option("--private", is_flag=True, help="Add private-network endpoints.")
@click.option("--image", help="Pull this image for real, e.g. us.icr.io/ns/app:1.")
@click.option("--proxy", help="http://HOST:PORT to CONNECT through (default: HTTPS_PROXY).")
@click.option("--no-proxy", is_flag=True, help="Connect directly even if HTTPS_PROXY is set.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False),
              help="Extra CA bundle (PEM) to trust, for private or inspecting CAs.")
@click.option("--resolve", "resolve_list", multiple=True, metavar="NAME=ADDRESS",
              help="Use this address for NAME instead of DNS, as curl --resolve (repeatable).")
@click.option("--user", metavar="USER:PASSWORD", envvar="PORTCULLIS_CHECK_USER",
              help="Registry credentials for --image (IBM Cloud: iamapikey:KEY).")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 300),
              help="Seconds for each connect, handshake and HTTP answer.")
@click.option("--dns-timeout", type=click.FloatRange(0.1, 300),
              help="Seconds for each DNS lookup (default: --timeout).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(registry: str | None, region_list: tuple[str, ...], china: bool, private: bool,
          image: str | None, proxy: str | None, no_proxy: bool, ca: str | None,
          resolve_list: tuple[str, ...], user: str | None, timeout: float,
          dns_timeout: float | None, as_json: bool) -> None:
    """Test DNS, TCP 443, TLS and GET /v2/ for each name a pull needs; say which is blocked.

    Exit 0 when everything passes, 1 when anything is blocked, 2 on bad input.
    """
    import os
    import ssl

    from portcullis.tools import check_view, doctor, netprobe, pull_probe

    if not registry and not image:
        raise click.UsageError("give --registry ID --region REGION, --image REF, or both")
    if region_list and not registry:
        raise click.UsageError("--region needs --registry (e.g. --registry ibm)")
    targets: list[doctor.Target] = []
    patterns: list[str] = []
    if registry:
        try:
            targets, patterns = doctor.catalog_targets(
                registry, region_list, china=china, private=private)
        except catalog.CatalogError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        ref = pull_probe.parse_image(image) if image else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    proxy_text = None if no_proxy else (
        proxy or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"))
    try:
        parsed_proxy = netprobe.parse_proxy(proxy_text) if proxy_text else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    credentials = None
    if user:
        name, sep, password = user.partition(":")
        if not sep:
            raise click.UsageError("--user: write USER:PASSWORD")
        credentials = (name, password)
    context = ssl.create_default_context()
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise click.UsageError(f"--ca {ca}: not a PEM CA bundle ({exc.reason})") from None
    route = netprobe.Route(context, parsed_proxy, _resolve_overrides(resolve_list), timeout,
                           dns_timeout or timeout)
    if check_view.progress_wanted(as_json):
        with check_view.ProgressObserver() as observer:
            report = doctor.run_check(route, targets, ref, credentials=credentials,
                                      observer=observer, patterns=patterns)
    else:
        report = doctor.run_check(route, targets, ref, credentials=credentials,
                                  patterns=patterns)
    if as_json:
        check_view.render_json(report)
    else:
        check_view.render_text(report)
    raise SystemExit(EXIT_OK if report.ok else EXIT_DENIED)


# --- transparent mode: nftables ---


def _uid(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    import pwd

    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise click.UsageError(f"--uid {value!r}: no such user") from None


@main.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Policy file (default: the embedded default policy).")
@click.option("--apply", "apply_rules", is_flag=True,
              help="Load the ruleset with `nft -f` instead of printing it (needs root).")
@click.option("--uid", "uid", metavar="USER|UID",
              help="Also exempt this user's traffic (the account Portcullis runs as).")
def nftables(path: str | None, apply_rules: bool, uid: str | None) -> None:
    """Print (or load) the nftables rules that redirect workers to the transparent listener."""
    from portcullis.tools import nftables as nft

    policy = _load_or_exit(path)
    try:
        text = nft.ruleset(policy, exempt_uid=_uid(uid), source=path or "the default policy")
    except NftablesError as exc:
        click.echo(f"portcullis nftables: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    if not apply_rules:
        click.echo(text, nl=False)
        return
    try:
        nft.load(text)
    except NftablesError as exc:
        click.echo(f"portcullis nftables: {exc}", err=True)
        raise SystemExit(EXIT_DENIED) from None
    click.echo(f"loaded table inet {nft.TABLE}")

# --- operator tools: learn ---


@main.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--registry-aware", is_flag=True,
              help="Widen registry names to the registry's wildcards or catalog reference.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the policy here (default: stdout).")
def learn(logs: tuple[str, ...], registry_aware: bool, output: str | None) -> None:
    """Print a minimal policy allowing exactly what decision LOGS (report mode) saw."""
    from portcullis.tools import learn as learning

    try:
        found = learning.read_logs(logs)
        policy = learning.learn_policy(found, registry_aware=registry_aware)
    except (OSError, UnicodeDecodeError, LearnError) as exc:
        click.echo(f"learn: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    text = learning.render(policy, found, logs, registry_aware=registry_aware)
    if output:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        click.echo(text, nl=False)
    def count(n: int, what: str) -> str:
        return f"{n} {what}" + ("" if n == 1 else "s")

    rules = policy["rules"]
    names = sum(len(rule["to"]) for rule in rules)
    where = f"; written to {output}" if output else ""
    click.echo(f"learnt {count(len(policy['sources']), 'source group')}, "
               f"{count(len(rules), 'rule')}, {count(names, 'destination')} from "
               f"{count(found.decisions, 'decision')}{where}", err=True)
    for what, n in sorted(found.skipped.items()):
        click.echo(f"  not learnt: {count(n, 'decision')} {what}", err=True)


# --- export: other firewalls' configurations ---


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Policy file to export.")
@click.option("--format", "fmt", required=True, type=click.Choice(list(exporting.FORMATS)),
              help="Target firewall.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here instead of stdout.")
@click.option("--option", "option_list", multiple=True, metavar="KEY=VALUE",
              help="A format's setting, e.g. cilium-version=1.18 (repeatable).")
def export(path: str, fmt: str, output: str | None, option_list: tuple[str, ...]) -> None:
    """Translate a policy into another firewall's configuration, with the same meaning.

    Exit 2, saying why, when the format cannot express the policy exactly.
    """
    policy = _load_or_exit(path)
    options: dict[str, str] = {}
    for item in option_list:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--option {item!r}: write --option key=value")
        options[key.strip()] = value.strip()
    spec = exporting.spec_from_file(path, policy)
    try:
        text = exporting.render(fmt, spec, options)
    except exporting.ExportRefused as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    if output is None:
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as file:
        file.write(text)


if __name__ == "__main__":
    main()
