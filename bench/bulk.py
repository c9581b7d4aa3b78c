"""Bulk: one 1 GiB TLS download from nginx through a CONNECT tunnel (or direct, or
through a TCP forwarder).

The client is curl writing to /dev/null: OpenSSL decrypts in C and nothing is
stored, so the client is not the limit; its own CPU use is reported to show it.
The proxy's CPU seconds are read from /proc before and after (all its processes).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from bench import procfs
from bench.servers import BULK_PATH, BULK_SIZE, ORIGIN_NAME, TLS_PORT, Server, dial_address

GIB = 1 << 30


@dataclass
class BulkResult:
    mib_s: float
    proxy_cpu_s_per_gib: float | None
    client_cpu_s_per_gib: float
    origin_cpu_s_per_gib: float


def download(ca_pem: str, proxy: Server | None, origin: Server, timeout: float = 120,
             path: str = BULK_PATH) -> BulkResult:
    url = f"https://{ORIGIN_NAME}:{TLS_PORT}{path}"
    cmd = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
           "--max-time", str(int(timeout)), "--cacert", ca_pem]
    (host, port), connect = dial_address(proxy)
    if connect:
        cmd += ["--proxy", f"http://{host}:{port}"]
    else:  # direct, or a forwarder to the origin's TLS port
        cmd += ["--connect-to", f"{ORIGIN_NAME}:{TLS_PORT}:{host}:{port}"]
    cmd.append(url)
    proxy_pids = procfs.tree(proxy.pid) if proxy is not None else []
    origin_pids = procfs.tree(origin.pid)
    proxy_cpu0 = procfs.cpu_seconds(proxy_pids)
    origin_cpu0 = procfs.cpu_seconds(origin_pids)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives curl's own rusage; communicate() would reap it without.
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0 or int(out or 0) != BULK_SIZE:
        raise RuntimeError(f"bulk download failed ({proc.returncode}): {out} {err}")
    gib = BULK_SIZE / GIB
    proxy_cpu = (procfs.cpu_seconds(proxy_pids) - proxy_cpu0) / gib if proxy else None
    return BulkResult(
        mib_s=BULK_SIZE / (1 << 20) / wall,
        proxy_cpu_s_per_gib=proxy_cpu,
        client_cpu_s_per_gib=(rusage.ru_utime + rusage.ru_stime) / gib,
        origin_cpu_s_per_gib=(procfs.cpu_seconds(origin_pids) - origin_cpu0) / gib,
    )
