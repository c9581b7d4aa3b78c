"""Starting, watching and stopping the testbed's server processes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


class TestbedError(RuntimeError):
    """A part of the testbed could not be set up; the message says which and why."""

    __test__ = False  # not a pytest test class despite the name


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TestbedError(
            f"`{name}` is not on PATH; the e2e testbed needs it (apt-get install {package})"
        )
    return path


def require_free(address: tuple[str, int], what: str) -> None:
    """Fail with a clear message when something already listens on `address`.

    A bind probe rather than a connect probe: a stale server that accepts nothing
    would still make our server's own bind fail, with a message buried in its log.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = f" (find the owner with: ss -ltnp 'src {address[0]}:{address[1]}')"
        elif exc.errno == errno.EACCES:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        raise TestbedError(
            f"cannot use {address[0]}:{address[1]} for the {what}: {exc.strerror}{hint}"
        ) from exc
    finally:
        probe.close()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without anything that would redirect a child's traffic
    or reconfigure docker-registry behind our back (it reads REGISTRY_* variables)."""
    dropped = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in dropped and not k.startswith("REGISTRY_")
    }
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc.strerror}>"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A server child with its output in a log file, stopped by its own pid/group."""

    def __init__(self, what: str, argv: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.what = what
        self.log = log
        with log.open("ab") as out:
            # Own session, so the fallback kill also reaches workers it forked
            # (nginx) without touching anything else.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )

    def wait_ready(self, probe: Callable[[], bool], timeout: float) -> float:
        """Poll `probe` until it returns True; return the seconds it took."""
        start = time.monotonic()
        last: BaseException | None = None
        while True:
            if self.proc.poll() is not None:
                raise TestbedError(
                    f"{self.what} exited with status {self.proc.returncode} while starting;"
                    f" log {self.log}:\n{log_tail(self.log)}"
                )
            try:
                if probe():
                    return time.monotonic() - start
            except (OSError, ValueError) as exc:
                last = exc
            if time.monotonic() - start > timeout:
                raise TestbedError(
                    f"{self.what} not ready after {timeout:.0f} s (last probe error: {last!r});"
                    f" log {self.log}:\n{log_tail(self.log)}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its pid still names our group: this
            # reaches the workers it forked (nginx) and nothing else.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
