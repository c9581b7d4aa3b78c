"""Run Portcullis as a real process (`portcullis serve -c FILE --log FILE`) for e2e tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.http import Answer, ask, connect
from tests.support.netns import Namespaces

PORTCULLIS = [sys.executable, "-m", "portcullis.cli"]


def policy_for(
    hosts: dict[str, list[str]], to: list[Any], *, mode: str = "enforce",
    allow_ranges: tuple[str, ...] | None = None,
    sources: tuple[str, ...] = ("127.0.0.0/8",), extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A policy for the loopback testbed: the names resolve through static hosts,
    and only the testbed's own addresses are admitted by allow_ranges."""
    if allow_ranges is None:  # the testbed's own addresses, and nothing else
        allow_ranges = tuple(sorted({f"{a}/32" for addrs in hosts.values() for a in addrs}))
    policy: dict[str, Any] = {
        "version": 1,
        "mode": mode,
        "listen": {"explicit": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "sources": {"workers": list(sources)},
        "rules": [{"name": "registry", "from": ["workers"], "to": to, "ports": [443]}]
        if to else [],
        # Copied: a test that edits its policy must not edit the (session) testbed's map.
        "resolver": {"hosts": {name: list(addrs) for name, addrs in hosts.items()},
                     "allow_ranges": list(allow_ranges), "timeout": 2},
        "limits": {"drain_timeout": 20, "header_timeout": 5},
    }
    policy.update(extra or {})
    return policy


def whole_lines(path: Path) -> list[str]:
    """The file's complete lines: the proxy may be halfway through writing the
    last one (one write(2) per line, but a reader can see part of a write)."""
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def wait_for_record(records: Callable[[], list[dict[str, Any]]], predicate: Any,
                    timeout: float = 10) -> dict[str, Any]:
    """The first record `predicate` accepts, polling `records()` until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in records():
            if predicate(record):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no matching log record within {timeout}s: {records()[-5:]}")


@dataclass
class RunningPortcullis:
    proc: subprocess.Popen[str]
    policy_path: Path
    log_path: Path
    explicit: tuple[str, int]
    admin: tuple[str, int]

    @property
    def url(self) -> str:
        return f"http://{self.explicit[0]}:{self.explicit[1]}"

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in whole_lines(self.log_path):
            record = json.loads(line)
            if event is None or record.get("event") == event:
                out.append(record)
        return out

    def decisions(self, host: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records("decision") if host is None or r["host"] == host]

    def write_policy(self, policy: dict[str, Any] | str) -> None:
        text = policy if isinstance(policy, str) else yaml.safe_dump(policy)
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def wait_for_log(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        return wait_for_record(self.records, predicate, timeout)

    def decision_since(self, mark: int, client_port: int, timeout: float = 10
                       ) -> dict[str, Any]:
        """The decision on the connection from `client_port`, among the records
        after `mark` (their count before it connected): a port alone may be an
        earlier connection's."""
        return wait_for_record(
            lambda: self.records()[mark:],
            lambda r: r.get("event") == "decision" and r.get("client_port") == client_port,
            timeout,
        )

    def use_policy(self, policy: dict[str, Any]) -> None:
        """Install `policy` (unless it is the current file) with SIGHUP and wait
        until the proxy says it reloaded."""
        if yaml.safe_load(self.policy_path.read_text()) == policy:
            return
        def reloads() -> int:
            return sum(1 for r in self.records() if r.get("msg") == "policy reloaded")
        done = reloads()
        self.write_policy(policy)
        self.reload()
        deadline = time.monotonic() + 10
        while reloads() <= done:
            assert time.monotonic() < deadline, self.records()[-3:]
            time.sleep(0.05)

    def connect(self, target: str) -> tuple[socket.socket, Answer]:
        """Send `CONNECT target` to the explicit listener: the socket and the answer head."""
        return connect(self.explicit, target)

    def ask(self, target: str, *, to_close: bool = False) -> Answer:
        """The answer to `CONNECT target` (see tests.support.http.ask)."""
        return ask(self.explicit, target, to_close=to_close)


@contextlib.contextmanager
def run_portcullis(
    workdir: Path, policy: dict[str, Any], *, args: tuple[str, ...] = ()
) -> Iterator[RunningPortcullis]:
    workdir.mkdir(parents=True, exist_ok=True)
    policy_path = workdir / "policy.yaml"
    log_path = workdir / "decisions.jsonl"
    policy_path.write_text(yaml.safe_dump(policy))
    log_path.write_text("")
    stderr = (workdir / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [*PORTCULLIS, "serve", "-c", str(policy_path), "--log", str(log_path), *args],
        stdout=subprocess.DEVNULL, stderr=stderr, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        listening: dict[str, Any] | None = None
        while listening is None:
            if proc.poll() is not None:
                raise AssertionError(
                    f"portcullis exited {proc.returncode}: {(workdir / 'stderr.txt').read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError("portcullis did not start within 20 s")
            for line in whole_lines(log_path):
                record = json.loads(line)
                if record.get("msg") == "listening":
                    listening = record
            time.sleep(0.05)

        def split(text: str) -> tuple[str, int]:
            host, _, port = text.rpartition(":")
            return host.strip("[]"), int(port)  # "[::1]:3128" for IPv6

        yield RunningPortcullis(
            proc, policy_path, log_path, split(listening["explicit"]), split(listening["admin"])
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr.close()


def apply_redirect(ns: Namespaces, policy: dict[str, Any], workdir: Path) -> None:
    """The firewall namespace's nftables redirect for `policy`, made by the command
    an operator would run on the gateway (`portcullis nftables --apply`)."""
    path = workdir / "nft-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    loaded = ns.exec("firewall", [*PORTCULLIS, "nftables", "-c", str(path), "--apply"])
    assert loaded.strip() == "loaded table inet portcullis", loaded
