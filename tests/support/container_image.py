"""deploy/Containerfile built and run for real, with podman, on a base made here.

The official Python image lives in a registry these machines cannot reach, so
the base is a Debian bookworm made with `debootstrap` (minbase, with python3,
python3-venv and ca-certificates) and turned into a local image with `podman
import`, as a user without registry access would (issue 16). The machine's CA
bundle goes into the base so the build's pip trusts the package index as the
host does.

What is slow is cached in CACHE_DIR, outside the checkout, and rebuilt when
missing: the base's root file system as a tarball (about 80 s to make, keyed
by its recipe and the CA bundle) and, in podman's store, the base image and the
Portcullis image (keyed by a hash of every file the build copies, about 30 s to
build). A lock file keeps two runs from building the same thing at once.

Two traits of this kind of host are handled here and named in the README:
`crun` refuses hosts with hybrid cgroups (controllers on the v2 hierarchy too),
so the runtime is `runc`; podman asks for RLIMIT_NOFILE and RLIMIT_NPROC of
1048576 by default, which a host without CAP_SYS_RESOURCE cannot grant ("error
setting rlimit type 7" / "type 6"), so both are given within its limits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.portcullis_proc import wait_for_record, whole_lines
from tests.support.testbed.procs import TestbedError, require_binary

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("PORTCULLIS_TEST_CACHE", "/var/cache/portcullis-tests"))

SUITE = "bookworm"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Emptied in the base, as slim images do: package caches, documentation, device nodes.
TRIMMED = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
           "usr/share/info", "usr/share/locale", "dev")
BASE_RECIPE = 1  # bump when the base's recipe changes in a way the key cannot see

BASE_REPO = "localhost/portcullis-test-base"
IMAGE_REPO = "localhost/portcullis-test"
RUNTIME = "runc"
# What deploy/Containerfile copies from the context (the .dockerignore admits these).
BUILD_INPUTS = ("deploy/Containerfile", ".dockerignore", "pyproject.toml", "README.md",
                "deploy/policy.yaml", "src")

UID = 10001
NPROC = 4096  # podman itself runs with at most 32768 here; the proxy needs a handful


class ImageError(TestbedError):
    """The image could not be built or run; the message says which step and why."""


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    base: str
    # Seconds each step took in this run; a step served from the cache is absent.
    timings: dict[str, float]


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([require_binary("podman", "podman"), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Exclusive use of CACHE_DIR (and of our tags in podman's store) across runs."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_key() -> str:
    recipe = json.dumps([BASE_RECIPE, SUITE, BASE_PACKAGES, TRIMMED]).encode()
    digest = hashlib.sha256(recipe)
    digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def _debootstrap(rootfs: Path, log: Path) -> None:
    binary = require_binary("debootstrap", "debootstrap")
    argv = [binary, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            f"--keyring={KEYRING}", SUITE, str(rootfs)]  # Debian's default mirror
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise ImageError(f"{' '.join(argv)} failed ({done.returncode}); log {log}:\n{tail}")


def _trim(rootfs: Path) -> None:
    for relative in TRIMMED:
        folder = rootfs / relative
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def base_image() -> tuple[str, dict[str, float]]:
    """The debootstrapped bookworm as a podman image: its tag, and the seconds
    spent making it (nothing when the image or its tarball was cached)."""
    require_binary("debootstrap", "debootstrap")
    key = base_key()
    tag = f"{BASE_REPO}:{SUITE}-{key}"
    tarball = CACHE_DIR / f"base-{SUITE}-{key}.tar"
    timings: dict[str, float] = {}
    with cache_lock():
        if image_exists(tag):
            return tag, timings
        if not tarball.exists():
            started = time.monotonic()
            rootfs = CACHE_DIR / f"rootfs-{os.getpid()}"
            shutil.rmtree(rootfs, ignore_errors=True)
            try:
                _debootstrap(rootfs, CACHE_DIR / "debootstrap.log")
                _trim(rootfs)
                shutil.copyfile(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
                partial = tarball.with_suffix(".partial")
                subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf",
                                str(partial), "."], check=True, timeout=300)
                partial.rename(tarball)
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)
            for stale in CACHE_DIR.glob(f"base-{SUITE}-*.tar"):
                if stale != tarball:
                    stale.unlink()
            timings["debootstrap"] = time.monotonic() - started
        started = time.monotonic()
        podman("import", str(tarball), tag, timeout=300)
        timings["import"] = time.monotonic() - started
    return tag, timings


def build_inputs_key(base: str) -> str:
    """A hash of every file the build copies (as .dockerignore admits them) and the base."""
    digest = hashlib.sha256(f"{base}\n".encode())
    paths: list[Path] = []
    for name in BUILD_INPUTS:
        path = REPO / name
        paths.extend(sorted(path.rglob("*")) if path.is_dir() else [path])
    for path in paths:
        relative = path.relative_to(REPO)
        if (path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc"
                or any(part.endswith(".egg-info") for part in relative.parts)):
            continue
        digest.update(f"{relative}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def portcullis_image(log: Path) -> BuiltImage:
    """deploy/Containerfile built on the debootstrapped base (`--format docker`, so
    the HEALTHCHECK stays), or the image a previous run built from the same files."""
    require_binary(RUNTIME, RUNTIME)
    base, timings = base_image()
    tag = f"{IMAGE_REPO}:{build_inputs_key(base)}"
    with cache_lock():
        if image_exists(tag):
            return BuiltImage(tag, base, timings)
        started = time.monotonic()
        argv = ["podman", "build", "--runtime", RUNTIME, "--network", "host", "--pull=never",
                "--layers=false", "--format", "docker", "--build-arg", f"BASE={base}",
                "-f", "deploy/Containerfile", "-t", tag, "."]
        with log.open("w") as out:
            done = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=600, check=False)
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise ImageError(f"{' '.join(argv)} failed ({done.returncode}); log {log}:\n{tail}")
        timings["build"] = time.monotonic() - started
        # Older builds go (the image first, then the base it was built on).
        _drop_other_tags(IMAGE_REPO, tag)
        _drop_other_tags(BASE_REPO, base)
    return BuiltImage(tag, base, timings)


def _drop_other_tags(repo: str, keep: str) -> None:
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo)
    for other in listed.stdout.split():
        if other != keep:
            podman("rmi", other, check=False)


def image_config(tag: str) -> dict[str, Any]:
    (data,) = json.loads(podman("image", "inspect", tag).stdout)
    return data  # type: ignore[no-any-return]


@contextlib.contextmanager
def mounted_image(tag: str) -> Iterator[Path]:
    """The image's root file system, mounted read-only on the host."""
    path = Path(podman("image", "mount", tag).stdout.strip())
    try:
        yield path
    finally:
        podman("image", "unmount", tag, check=False)


# --- running it ----------------------------------------------------------------------


def ulimits() -> list[str]:
    """`--ulimit` options podman can grant without CAP_SYS_RESOURCE: within the
    hard limits of the process that runs it."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else min(hard, 1048576)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={NPROC}:{NPROC}"]


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status of GET url, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def require_free(address: tuple[str, int]) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise ImageError(f"{address[0]}:{address[1]} is in use ({exc}); the container"
                             " listens there with the host's network") from None


@dataclass
class RunningContainer:
    name: str
    proc: subprocess.Popen[str]
    stdout: Path
    stderr: Path
    explicit: tuple[str, int]
    admin: tuple[str, int]
    # From `podman run` to /readyz 200, and from the proxy process's start to it.
    ready_after_run: float
    ready_after_process_start: float

    @property
    def url(self) -> str:
        return f"http://{self.explicit[0]}:{self.explicit[1]}"

    def admin_url(self, path: str) -> str:
        return f"http://{self.admin[0]}:{self.admin[1]}{path}"

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines the container wrote to stdout (its decision log)."""
        out = []
        for line in whole_lines(self.stdout):
            if line.startswith("{"):
                record = json.loads(line)
                if event is None or record.get("event") == event:
                    out.append(record)
        return out

    def decisions(self) -> list[dict[str, Any]]:
        return self.records("decision")

    def wait_for_log(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        return wait_for_record(self.records, predicate, timeout)

    def host_pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, timeout=timeout, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK, run once inside the container (exit 0: healthy)."""
        return podman("healthcheck", "run", self.name, check=False)

    def kill(self, signal_name: str) -> None:
        podman("kill", "--signal", signal_name, self.name)


def process_age(pid: int) -> float:
    """Seconds since `pid` started (its start time in /proc/PID/stat, boot-time based)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


@contextlib.contextmanager
def run_image(tag: str, workdir: Path, policy: dict[str, Any], *, name: str
              ) -> Iterator[RunningContainer]:
    """The image run as the Deployment runs it: read-only root with only /tmp
    writable, uid 10001, no capabilities, no new privileges, the policy mounted as
    a directory at /etc/portcullis; with the host's network, so it reaches the
    testbed on loopback. The policy's listen addresses must be fixed ports."""
    explicit = _split(policy["listen"]["explicit"])
    admin = _split(policy["listen"]["admin"])
    for address in (explicit, admin):
        require_free(address)
    policy_dir = workdir / "etc"
    policy_dir.mkdir(parents=True)
    (policy_dir / "policy.yaml").write_text(yaml.safe_dump(policy))
    policy_dir.chmod(0o755)  # the container's uid must read what pytest's tmp_path hides
    (policy_dir / "policy.yaml").chmod(0o644)
    stdout, stderr = workdir / "stdout.jsonl", workdir / "stderr.txt"
    podman("rm", "--force", "--time", "0", name, check=False)
    argv = [require_binary("podman", "podman"), "run", "--runtime", RUNTIME, "--rm",
            "--name", name, "--network", "host", "--pull=never",
            "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777,size=16m",
            "--user", f"{UID}:{UID}", "--cap-drop", "all", "--security-opt", "no-new-privileges",
            *ulimits(), "--volume", f"{policy_dir}:/etc/portcullis:ro", tag]
    started = time.monotonic()
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                text=True)
    try:
        readyz = f"http://{admin[0]}:{admin[1]}/readyz"
        deadline = started + 60
        while http_status(readyz, timeout=1) != 200:
            if proc.poll() is not None:
                raise ImageError(f"the container exited {proc.returncode}:\n{stderr.read_text()}"
                                 f"\n{stdout.read_text()}")
            if time.monotonic() > deadline:
                raise ImageError(f"/readyz did not answer 200 within 60 s:\n{stderr.read_text()}")
            time.sleep(0.02)
        ready_at = time.monotonic()
        running = RunningContainer(name, proc, stdout, stderr, explicit, admin,
                                   ready_at - started, 0.0)
        pid = running.host_pid()
        age, now = process_age(pid), time.monotonic()
        running.ready_after_process_start = age - (now - ready_at)
        yield running
    finally:
        if proc.poll() is None:
            podman("kill", "--signal", "TERM", name, check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                podman("rm", "--force", "--time", "0", name, check=False)
                proc.wait(timeout=30)


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)
