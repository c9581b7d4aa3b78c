"""A private containerd (its own root, state, socket and config) and `ctr` pulls
through it, with a `hosts.toml` that names the CAs the client trusts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.testbed.procs import clean_env, require_binary

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
"""


@dataclass(frozen=True)
class Containerd:
    socket: Path
    workdir: Path
    log: Path

    def pull(self, ref: str, hosts_dir: Path, *, proxy: str | None = None,
             netns: str | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
        """`ctr images pull` (native snapshotter, so it unpacks anywhere)."""
        argv = [require_binary("ctr", "containerd"), "--address", str(self.socket),
                "--namespace", "portcullis-test", "images", "pull", "--snapshotter", "native",
                "--hosts-dir", str(hosts_dir), ref]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        extra = {k: proxy for k in ("HTTPS_PROXY", "https_proxy")} if proxy else {}
        return subprocess.run(argv, env=clean_env(extra), capture_output=True, text=True,
                              timeout=timeout, check=False)


def hosts_dir(directory: Path, host: str, cas: list[Path]) -> Path:
    """A `--hosts-dir` whose `HOST/hosts.toml` trusts exactly `cas`."""
    (directory / host).mkdir(parents=True, exist_ok=True)
    # containerd 1.6 takes one file for the server's `ca`: a bundle of them all.
    bundle = directory / host / "ca-bundle.pem"
    bundle.write_bytes(b"".join(ca.read_bytes() for ca in cas))
    # containerd 1.6 refuses `ca` at the top level; under `[host]` it applies to
    # that host, and `server` stays a fallback (system store only) that
    # containerd tries after any failure, a refusal included.
    (directory / host / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n[host."https://{host}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{bundle}"\n')
    return directory


@contextlib.contextmanager
def private_containerd(workdir: Path, timeout: float = 20) -> Iterator[Containerd]:
    binary = require_binary("containerd", "containerd")
    workdir.mkdir(parents=True, exist_ok=True)
    socket = workdir / "containerd.sock"
    config = workdir / "config.toml"
    config.write_text(_CONFIG.format(root=workdir / "root", state=workdir / "state",
                                     socket=socket))
    log = workdir / "containerd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([binary, "--config", str(config)], stdout=out, stderr=out,
                                env=clean_env())
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"containerd exited {proc.returncode}: {log.read_text()}")
            if socket.exists():
                ready = subprocess.run([require_binary("ctr", "containerd"), "--address",
                                        str(socket), "version"], capture_output=True)
                if ready.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd not ready in {timeout} s: {log.read_text()}")
            time.sleep(0.1)
        yield Containerd(socket, workdir, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Snapshots of the native snapshotter are plain directories: remove them.
        subprocess.run(["rm", "-rf", str(workdir / "root"), str(workdir / "state")],
                       check=False)
        with contextlib.suppress(OSError):
            os.unlink(socket)
