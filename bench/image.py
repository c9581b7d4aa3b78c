"""The container image: its size, and its start-up time to /readyz 200.

    python -m bench.image --image localhost/portcullis-test:KEY [--base IMAGE] [--runs 10]

Not part of `make bench`: it needs an image built from deploy/Containerfile
(tests/e2e/test_container_image.py leaves one in podman's store, or build one as
the README shows). Size: podman's (uncompressed) size of the image and of the
base, and the gzip-compressed `podman save` archive, about what a pull moves.
Start-up, per run: the image started as the README runs it (read-only, uid 10001,
host network, a policy on free loopback ports mounted), timed from `podman run`
and from the start of the container's process (/proc/PID/stat) to the first 200
from /readyz; and, for comparison, `portcullis serve` from this checkout's venv
on the same policy. Medians, minima and maxima over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from bench.procfs import machine
from bench.servers import free_port

NPROC = 4096


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True,
                          timeout=300).stdout


def size(image: str) -> int:
    return int(json.loads(podman("image", "inspect", image))[0]["Size"])


def compressed_size(image: str) -> int:
    save = subprocess.Popen(["podman", "save", "--format", "docker-archive", image],
                            stdout=subprocess.PIPE)
    gzip = subprocess.run(["gzip", "-6"], stdin=save.stdout, capture_output=True, check=True)
    assert save.wait() == 0
    return len(gzip.stdout)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def process_age(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def policy_dir(work: Path) -> tuple[Path, str]:
    admin = free_port()
    policy = {"version": 1, "listen": {"explicit": f"127.0.0.1:{free_port()}",
                                       "admin": f"127.0.0.1:{admin}"},
              "sources": {"local": ["127.0.0.0/8"]}, "rules": [], "default": "deny"}
    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy))
    folder.chmod(0o755)
    (folder / "policy.yaml").chmod(0o644)
    return folder, f"http://127.0.0.1:{admin}/readyz"


def wait_ready(url: str, proc: subprocess.Popen[bytes], started: float) -> float:
    while not ready(url):
        if proc.poll() is not None or time.monotonic() - started > 60:
            raise RuntimeError(f"not ready: exit {proc.returncode}")
        time.sleep(0.01)
    return time.monotonic()


def container_start(image: str, runtime: str, work: Path) -> tuple[float, float]:
    """(podman run -> readyz 200, process start -> readyz 200), in seconds."""
    folder, url = policy_dir(work)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    name = f"portcullis-bench-{os.getpid()}"
    argv = ["podman", "run", "--runtime", runtime, "--rm", "--name", name, "--network", "host",
            "--pull=never", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
            "--user", "10001:10001", "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--ulimit", f"nofile={hard}:{hard}", "--ulimit", f"nproc={NPROC}:{NPROC}",
            "--volume", f"{folder}:/etc/portcullis:ro", image]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready_at = wait_ready(url, proc, started)
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name))
        age, now = process_age(pid), time.monotonic()
        return ready_at - started, age - (now - ready_at)
    finally:
        subprocess.run(["podman", "kill", "--signal", "TERM", name], capture_output=True)
        proc.wait(timeout=60)


def venv_start(work: Path) -> float:
    folder, url = policy_dir(work)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "portcullis.cli", "serve", "-c",
                             str(folder / "policy.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_ready(url, proc, started) - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} s (min {min(values):.2f}, "
            f"max {max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--base", help="the base image, to tell what the image adds")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--runtime", default="runc", help="podman's OCI runtime (runc here:"
                        " crun refuses hybrid cgroups)")
    args = parser.parse_args()
    facts = machine()
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, kernel {facts['kernel']}; "
          f"{podman('--version').strip()}, runtime {args.runtime}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    mib = 1024 * 1024
    line = f"size: {args.image} {size(args.image) / mib:.1f} MiB"
    if args.base:
        line += f" (base {args.base} {size(args.base) / mib:.1f} MiB)"
    print(line + f"; gzip'd podman save {compressed_size(args.image) / mib:.1f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        container_start(args.image, args.runtime, work)  # warm the page cache
        runs = [container_start(args.image, args.runtime, work) for _ in range(args.runs)]
        venv = [venv_start(work) for _ in range(args.runs)]
    print(f"podman run -> /readyz 200: {spread([r[0] for r in runs])}")
    print(f"container process start -> /readyz 200: {spread([r[1] for r in runs])}")
    print(f"venv `portcullis serve` start -> /readyz 200: {spread(venv)}")


if __name__ == "__main__":
    main()
