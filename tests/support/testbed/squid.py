"""Squid as a known-good reference proxy in front of the testbed.

It proves the client helpers (skopeo_pull through HTTPS_PROXY, the redirect to
dd0.icr.io, verify_pulled) work end to end before Portcullis is in the path, and
gives Portcullis tests a baseline to compare with. Squid resolves the testbed
names from its own hosts_file, never from /etc/hosts or a real DNS server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .procs import ManagedProcess, clean_env, require_binary

# Debian's squid refuses to run as root and drops to this user, so its directory
# must be the user's and live outside pytest's root-only (0700) tmp tree.
SQUID_USER = "proxy"


@dataclass(frozen=True)
class ReferenceProxy:
    url: str  # for HTTPS_PROXY, e.g. "http://127.0.0.1:41234"
    address: tuple[str, int]
    access_log: Path  # one line per CONNECT: name, bytes, the address dialled
    cache_log: Path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# The reference proxy's own access rules: any loopback client, CONNECT only to 443.
REFERENCE_ACCESS = """\
acl clients src 127.0.0.0/8
acl tls_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !tls_ports
http_access allow clients
http_access deny all
"""


def _config(
    directory: Path, address: tuple[str, int], hosts_file: Path, proxy: ReferenceProxy,
    access: str,
) -> str:
    return f"""\
http_port {address[0]}:{address[1]}
visible_hostname portcullis-testbed-squid
cache_effective_user {SQUID_USER}
pid_filename {directory / "squid.pid"}
cache_log {proxy.cache_log}
access_log stdio:{proxy.access_log}
coredump_dir {directory}
cache deny all
cache_mem 8 MB
hosts_file {hosts_file}
# Anything not in hosts_file goes to a resolver on loopback, never off the machine.
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 0 seconds
{access}"""


@contextlib.contextmanager
def start_reference_proxy(
    hosts: Mapping[str, list[str]], *, host: str = "127.0.0.1", timeout: float = 10.0,
    access: str = REFERENCE_ACCESS,
) -> Iterator[ReferenceProxy]:
    """Squid on `host`:<free port> resolving `hosts`; `access` holds its ACLs and
    http_access rules (the reference rules, or a configuration under test)."""
    binary = require_binary("squid", "squid")
    user = pwd.getpwnam(SQUID_USER)
    directory = Path(tempfile.mkdtemp(prefix="portcullis-squid-"))
    # A per-run service name keeps squid's /dev/shm segments apart from any other
    # squid on the machine, and tells us exactly which ones to remove afterwards.
    # Squid takes only letters and digits here; mkdtemp suffixes may hold '_'.
    suffix = "".join(c for c in directory.name.rsplit("-", 1)[-1] if c.isalnum())
    service = f"pcsquid{os.getpid()}x{suffix}"
    try:
        hosts_file = directory / "hosts"
        hosts_file.write_text(
            "".join(f"{addr} {name}\n" for name, addrs in hosts.items() for addr in addrs)
        )
        address = (host, _free_port(host))
        proxy = ReferenceProxy(
            url=f"http://{address[0]}:{address[1]}",
            address=address,
            access_log=directory / "access.log",
            cache_log=directory / "cache.log",
        )
        config = directory / "squid.conf"
        config.write_text(_config(directory, address, hosts_file, proxy, access))
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        proc = ManagedProcess(
            "squid",
            [binary, "-N", "-n", service, "-f", str(config)],
            directory / "stdout.log",
            clean_env(),
        )
        try:

            def probe() -> bool:
                with socket.create_connection(address, timeout=1.0):
                    return True

            proc.wait_ready(probe, timeout)
            yield proxy
        finally:
            proc.stop(grace=10.0)
    finally:
        for seg in Path("/dev/shm").glob(f"{service}-*"):
            seg.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
