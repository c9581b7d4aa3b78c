"""Scale-out: `portcullis serve --workers 2` runs two processes behind one port
(SO_REUSEPORT). The kernel spreads connections over both, a real pull works
through them, and one SIGHUP to the parent reloads the policy in both.

Decision records carry no pid, so which worker took a connection is read from
the kernel: the accepted socket's inode (/proc/net/tcp) among each worker's
file descriptors (/proc/PID/fd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.http import dial, send_connect
from tests.support.portcullis_proc import RunningPortcullis, policy_for, run_portcullis
from tests.support.testbed import Testbed, skopeo_pull, start_testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

REGISTRY_IP = "127.0.0.24"
CDN_IP = "127.0.0.25"
CONNECTIONS = 24  # all on one worker by chance: 2 * 2**-24


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with start_testbed(tmp_path_factory.mktemp("scale-testbed"),
                       registry_ip=REGISTRY_IP, cdn_ip=CDN_IP) as testbed:
        yield testbed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def workers(proxy: RunningPortcullis, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in proxy.records() if r.get("msg") == "listening"]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} workers listening: {proxy.records()[-5:]}")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _hex_address(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def owner(server: tuple[str, int], client: socket.socket, pids: list[int]) -> int:
    """The worker holding the accepted end of `client`'s connection."""
    local = _hex_address(*server)
    remote = _hex_address(*client.getsockname())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote and fields[9] != "0":
                inode = fields[9]
        if inode is not None:
            target = f"socket:[{inode}]"
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(FileNotFoundError):
                            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                                return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker accepted the connection from {client.getsockname()}")


def decisions_counted(proxy: RunningPortcullis) -> float:
    """The sum of portcullis_decisions_total in one scrape of /metrics."""
    url = f"http://{proxy.admin[0]}:{proxy.admin[1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("portcullis_decisions_total{"))


def connect_and_ask(proxy: RunningPortcullis, target: str, pids: list[int]) -> tuple[int, bytes]:
    """Open a connection, see which worker took it, then send CONNECT; the
    caller gets the worker and the answer's status line."""
    with dial(proxy.explicit) as sock:
        pid = owner(proxy.explicit, sock, pids)
        return pid, send_connect(sock, target).status_line


def test_two_workers_share_the_port_pull_and_reload_together(
    bed: Testbed, tmp_path: Path
) -> None:
    policy = policy_for(bed.hosts, ["us.icr.io", "dd0.icr.io"])
    # Both workers bind the same fixed ports (port 0 would give each its own).
    policy["listen"] = {"explicit": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"}
    with run_portcullis(tmp_path / "p", policy, args=("--workers", "2")) as proxy:
        listening = workers(proxy, 2)
        pids = sorted(int(r["pid"]) for r in listening)
        assert len(set(pids)) == 2
        assert all(parent_of(pid) == proxy.proc.pid for pid in pids)
        assert {r["explicit"] for r in listening} == {policy["listen"]["explicit"]}

        # The kernel spreads connections over both workers; each one serves them.
        taken: dict[int, int] = dict.fromkeys(pids, 0)
        for _ in range(CONNECTIONS):
            pid, status = connect_and_ask(proxy, "us.icr.io:443", pids)
            assert status == b"HTTP/1.1 200 Connection established", status
            taken[pid] += 1
        assert all(count > 0 for count in taken.values()), taken

        # A real pull through the pair: registry and blob redirect.
        out = tmp_path / "out"
        result = skopeo_pull(bed.image_ref, out, ca_dir=bed.ca_dir, proxy=proxy.url, timeout=180)
        assert result.returncode == 0, result.stderr
        verify_pulled(out, bed.image)
        assert {r["host"] for r in proxy.decisions() if r["decision"] == "allow"} == {
            "us.icr.io", "dd0.icr.io"}

        # One SIGHUP to the parent reloads both. The new file keeps the old
        # mtime, so the workers' 2-second mtime poll cannot be what reloads it.
        mtime = proxy.policy_path.stat().st_mtime_ns
        reloaded = policy_for(bed.hosts, ["us.icr.io"])
        reloaded["listen"] = policy["listen"]
        proxy.write_policy(yaml.safe_dump(reloaded))
        os.utime(proxy.policy_path, ns=(mtime, mtime))
        before = len([r for r in proxy.records() if r.get("msg") == "policy reloaded"])
        assert before == 0
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = [r for r in proxy.records() if r.get("msg") == "policy reloaded"]
            if len(done) >= 2:
                break
            time.sleep(0.05)
        time.sleep(2.5)  # one poll interval: nothing else may reload
        done = [r for r in proxy.records() if r.get("msg") == "policy reloaded"]
        assert len(done) == 2, done

        # Every worker now refuses dd0.icr.io, and both are seen doing it.
        refused_by: dict[int, int] = dict.fromkeys(pids, 0)
        for _ in range(CONNECTIONS):
            pid, status = connect_and_ask(proxy, "dd0.icr.io:443", pids)
            assert status.startswith(b"HTTP/1.1 403 "), (pid, status)
            refused_by[pid] += 1
        assert all(count > 0 for count in refused_by.values()), refused_by
        shutil.rmtree(out)
        result = skopeo_pull(bed.small_image_ref, out, ca_dir=bed.ca_dir, proxy=proxy.url,
                             timeout=120)
        assert result.returncode != 0

        # /metrics adds up across the workers: whichever worker takes a scrape
        # (the admin port is shared too), it counts every decision in the log.
        time.sleep(0.5)  # the last refusals' records and counters
        logged = len(proxy.decisions())
        for _ in range(8):
            assert decisions_counted(proxy) == logged
        # SIGTERM to the parent drains and stops both workers; exit status 0.
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=40) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
                f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
