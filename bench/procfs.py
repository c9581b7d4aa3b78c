"""What a process tree costs, read from /proc: CPU seconds, RSS, PSS, open fds.

A proxy may be several processes (Squid's master and kid, tinyproxy's threads
live in one, `portcullis serve --workers N` forks), so every figure is summed
over the root pid and all its descendants.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """root and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[21]) * _PAGE
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: pages shared by forked workers counted once overall."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        if match:
            total += int(match.group(1)) * 1024
    return total


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


@dataclass
class Usage:
    cpu_s: float
    rss: int
    pss: int
    fds: int


def usage(root: int) -> Usage:
    pids = tree(root)
    return Usage(cpu_seconds(pids), rss_bytes(pids), pss_bytes(pids), open_fds(pids))


def _version(cmd: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "uvloop": version("uvloop"),
        "squid": _version(["squid", "-v"], r"Version (\S+)"),
        "tinyproxy": _version(["tinyproxy", "-v"], r"tinyproxy (\S+)"),
        "haproxy": _version(["haproxy", "-v"], r"HAProxy version (\S+)"),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "curl": _version(["curl", "--version"], r"curl (\S+)"),
        "openssl": _version(["openssl", "version"], r"OpenSSL (\S+)"),
    }
