"""Network namespaces for tests that need routing, redirects and addresses of their own.

Names carry the pid and a counter, so concurrent test runs never share one, and
`namespaces()` deletes every namespace it made when its block exits, failing or
not. `inside(ns)` moves only the calling thread into a namespace (setns(2)):
sockets it creates stay there, and processes it starts are born there, which is
how servers and probes run in a namespace without `ip netns exec` wrappers.
Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), as CI has.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def run(argv: Sequence[str], *, input: str | None = None) -> str:
    result = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace `name`, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class Namespaces:
    """The namespaces of one test, by role; `ns.worker` is the real name."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.names: dict[str, str] = {}

    def add(self, role: str) -> str:
        name = f"pc{self.tag}-{role}"[:30]
        run(["ip", "netns", "add", name])
        self.names[role] = name
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def __getattr__(self, role: str) -> str:
        try:
            return self.names[role]
        except KeyError:
            raise AttributeError(role) from None

    def exec(self, role: str, argv: Sequence[str], *, input: str | None = None) -> str:
        return run(["ip", "netns", "exec", self.names[role], *argv], input=input)

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair between two namespaces, created inside them (no host-side names)."""
        run(["ip", "-n", self.names[a], "link", "add", a_if, "type", "veth",
             "peer", "name", b_if, "netns", self.names[b]])
        run(["ip", "-n", self.names[a], "link", "set", a_if, "up"])
        run(["ip", "-n", self.names[b], "link", "set", b_if, "up"])

    def address(self, role: str, interface: str, cidr: str) -> None:
        run(["ip", "-n", self.names[role], "addr", "add", cidr, "dev", interface])

    def etc(self, role: str, files: dict[str, str]) -> None:
        """Files `ip netns exec` binds over /etc inside the namespace (hosts, resolv.conf)."""
        directory = ETC_NETNS / self.names[role]
        for attempt in range(3):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                # Another run's delete() removed the then-empty /etc/netns in between.
                if attempt == 2:
                    raise
        for file, text in files.items():
            (directory / file).write_text(text)

    def routed(self, worker_ips: Sequence[str], firewall_ips: tuple[str, str],
               upstream: str, upstream_ips: Sequence[str]) -> None:
        """worker <-> firewall <-> `upstream` on two /24 links, the firewall forwarding
        and each side's default route through it: a node whose traffic the
        firewall sees (firewall_ips: its address towards the worker, towards upstream)."""
        to_worker, to_upstream = firewall_ips
        self.link("firewall", "fw-w", "worker", "wk0")
        self.link("firewall", "fw-u", upstream, "up0")
        for ip in worker_ips:
            self.address("worker", "wk0", f"{ip}/24")
        self.address("firewall", "fw-w", f"{to_worker}/24")
        self.address("firewall", "fw-u", f"{to_upstream}/24")
        for ip in upstream_ips:
            self.address(upstream, "up0", f"{ip}/24")
        self.exec("worker", ["ip", "route", "add", "default", "via", to_worker])
        self.exec(upstream, ["ip", "route", "add", "default", "via", to_upstream])
        self.exec("firewall", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def delete(self) -> None:
        errors = []
        for name in self.names.values():
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
            # Deleting a namespace also removes its veths and their peers.
            result = subprocess.run(["ip", "netns", "del", name], capture_output=True,
                                    text=True, timeout=30, check=False)
            if result.returncode != 0 and (NETNS_DIR / name).exists():
                errors.append(result.stderr)
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only when no other run still has files there
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


@contextlib.contextmanager
def namespaces(*roles: str) -> Iterator[Namespaces]:
    """Fresh namespaces for `roles`, deleted when the block exits."""
    ns = Namespaces(f"{os.getpid()}{next(_counter)}")
    try:
        for role in roles:
            ns.add(role)
        yield ns
    finally:
        ns.delete()
