"""`check`: whether the names a pull needs get through, and where they are blocked."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence

import click

from portcullis import catalog
from portcullis.cli.common import EXIT_DENIED, EXIT_OK, main


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


def _context(cafile: str | None, option: str) -> ssl.SSLContext:
    """The system's trust store, plus `cafile` when given."""
    context = ssl.create_default_context()
    if cafile:
        try:
            context.load_verify_locations(cafile=cafile)
        except ssl.SSLError as exc:
            raise click.UsageError(f"{option} {cafile}: not a PEM CA bundle ({exc.reason})"
                                   ) from None
    return context


@main.command()
@click.option("--registry", help="Check the names of this registry catalog (ibm, ...).")
@click.option("--region", "region_list", multiple=True,
              help="Region id, doc name or host (repeatable; with --registry).")
@click.option("--china", is_flag=True, help="Add the hosts for users located in China.")
@click.option("--private", is_flag=True, help="Add private-network endpoints.")
@click.option("--image", help="Pull this image for real, e.g. us.icr.io/ns/app:1.")
@click.option("--proxy",
              help="http://HOST:PORT or https://HOST:PORT to CONNECT through "
                   "(default: HTTPS_PROXY; without a port, 80 or 443 as containerd "
                   "reads it).")
@click.option("--no-proxy", is_flag=True, help="Connect directly even if HTTPS_PROXY is set.")
@click.option("--no-proxy-for", "no_proxy_for", metavar="LIST",
              help="Names that go direct, as Go reads NO_PROXY (default: NO_PROXY, no_proxy).")
@click.option("--proxy-ca", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle (PEM) that signs an https:// proxy's certificate.")
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
          image: str | None, proxy: str | None, no_proxy: bool, no_proxy_for: str | None,
          proxy_ca: str | None, ca: str | None,
          resolve_list: tuple[str, ...], user: str | None, timeout: float,
          dns_timeout: float | None, as_json: bool) -> None:
    """Test DNS, TCP 443, TLS and GET /v2/ for each name a pull needs; say which is blocked.

    Exit 0 when everything passes, 1 when anything is blocked, 2 on bad input.
    """
    import os

    from portcullis.tools import check_view, doctor, netprobe, pull_probe
    from portcullis.tools.noproxy import NO_PROXY_VARIABLES, NoProxy

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
    if proxy_ca and (parsed_proxy is None or parsed_proxy.scheme != "https"):
        raise click.UsageError("--proxy-ca is for an https:// proxy; the proxy is "
                               f"{parsed_proxy.url if parsed_proxy else 'not set'}")
    # Go's httpproxy reads the first of NO_PROXY, no_proxy that is not empty.
    bypass_text = no_proxy_for if no_proxy_for is not None else next(
        (os.environ[v] for v in NO_PROXY_VARIABLES if os.environ.get(v)), "")
    credentials = None
    if user:
        name, sep, password = user.partition(":")
        if not sep:
            raise click.UsageError("--user: write USER:PASSWORD")
        credentials = (name, password)
    context = _context(ca, "--ca")
    route = netprobe.Route(context, parsed_proxy, _resolve_overrides(resolve_list), timeout,
                           dns_timeout or timeout, NoProxy.parse(bypass_text),
                           # Built once here, not per tunnel: it loads the system store.
                           _context(proxy_ca, "--proxy-ca")
                           if parsed_proxy is not None and parsed_proxy.scheme == "https"
                           else None)
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
