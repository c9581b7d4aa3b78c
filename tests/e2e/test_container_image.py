"""deploy/Containerfile built with podman on a debootstrapped Debian bookworm and
run as the Deployment runs it (read-only root, uid 10001, no capabilities, the
policy mounted) in front of the registry testbed (issue 16).

The first run on a machine makes the base and builds the image; later runs
reuse both (from /var/cache/portcullis-tests and podman's store) until a file
the build copies changes: tests/support/container_image.py.
"""

from __future__ import annotations

import ssl
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.container_image import (
    UID,
    BuiltImage,
    RunningContainer,
    http_status,
    image_config,
    mounted_image,
    portcullis_image,
    run_image,
)
from tests.support.http import Answer, ask, connect, read_to_close
from tests.support.portcullis_proc import policy_for
from tests.support.testbed import Testbed, verify_pulled

# The first run on a machine builds the base and the image inside a fixture.
pytestmark = [pytest.mark.e2e, pytest.mark.privileged, pytest.mark.timeout(900)]

EXPLICIT = ("127.0.0.1", 3128)
# The image's HEALTHCHECK asks 127.0.0.1:9090: the admin port is the image's own.
ADMIN = ("127.0.0.1", 9090)
COMPILERS = {"cc", "c++", "gcc", "g++", "cpp", "clang", "clang++", "tcc", "as", "ld",
             "cc1", "cc1plus", "collect2"}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    built = portcullis_image(tmp_path_factory.mktemp("build") / "build.log")
    print(f"image {built.tag} on {built.base}; made in this run: {built.timings or 'nothing'}")
    return built


@pytest.fixture(scope="module")
def container(image: BuiltImage, testbed: Testbed,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningContainer]:
    listen = {"explicit": "{}:{}".format(*EXPLICIT), "admin": "{}:{}".format(*ADMIN)}
    # A short drain: the tunnel the drain test keeps open ends in milliseconds
    # (tunnels a pull leaves behind close with their peers since the relay reads
    # on to EAGAIN, test_explicit.py::test_every_tunnel_of_repeated_pulls_...).
    limits = {"drain_timeout": 8, "header_timeout": 5}
    policy = policy_for(testbed.hosts, ["us.icr.io", "dd0.icr.io"],
                        extra={"listen": listen, "limits": limits})
    with run_image(image.tag, tmp_path_factory.mktemp("container"), policy,
                   name="portcullis-e2e") as running:
        print(f"/readyz 200 after {running.ready_after_run:.2f} s from `podman run`, "
              f"{running.ready_after_process_start:.2f} s from the process's start")
        yield running


def refused(container: RunningContainer, target: str) -> Answer:
    return ask(container.explicit, target, to_close=True)


def test_image_is_the_containerfile_built_on_the_given_base(image: BuiltImage) -> None:
    config = image_config(image.tag)
    # Built on the debootstrapped base: its one layer is the image's first.
    assert config["RootFS"]["Layers"][0] == image_config(image.base)["RootFS"]["Layers"][0]
    assert config["Config"]["User"] == f"{UID}:{UID}"
    assert config["Config"]["Entrypoint"] == ["portcullis"]
    assert set(config["Config"]["ExposedPorts"]) == {"3128/tcp", "9090/tcp"}
    # --format docker kept the health check (the OCI format has no field for it).
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "/healthz" in test[-1]


def test_image_holds_no_compiler_and_no_write_bit_outside_tmp(image: BuiltImage) -> None:
    compilers, writable = [], []
    with mounted_image(image.tag) as root:
        assert (root / "opt/portcullis/bin/portcullis").exists()
        assert (root / "etc/portcullis/policy.yaml").exists()
        for path in root.rglob("*"):
            inside = "/" + str(path.relative_to(root))
            info = path.lstat()
            runnable = stat.S_ISLNK(info.st_mode) or (
                stat.S_ISREG(info.st_mode) and info.st_mode & 0o111)
            if runnable and (path.name in COMPILERS or path.name.startswith(
                    ("gcc-", "g++-", "clang-", "x86_64-linux-gnu-"))):
                compilers.append(inside)
            if stat.S_ISLNK(info.st_mode) or inside == "/tmp" or inside.startswith("/tmp/"):
                continue
            # A write bit for the world, or for the uid or gid the container runs as.
            if (info.st_mode & stat.S_IWOTH
                    or (info.st_uid == UID and info.st_mode & stat.S_IWUSR)
                    or (info.st_gid == UID and info.st_mode & stat.S_IWGRP)):
                writable.append(f"{inside} {stat.filemode(info.st_mode)}")
    assert compilers == []
    assert writable == []


def test_container_runs_read_only_as_uid_10001(container: RunningContainer) -> None:
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{container.host_pid()}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
    # Only /tmp takes a write: the root, the policy's mount, /var/tmp and /run refuse.
    probe = ("import errno, sys\n"
             "for d in sys.argv[1:]:\n"
             "    try:\n"
             "        open(d + '/probe', 'w').close(); print(d, 'ok')\n"
             "    except OSError as e:\n"
             "        print(d, errno.errorcode[e.errno])\n")
    places = ["/tmp", "/", "/etc/portcullis", "/opt/portcullis", "/var/tmp", "/run"]
    done = container.exec("python3", "-c", probe, *places)
    assert done.returncode == 0, done.stderr
    assert dict(line.split() for line in done.stdout.splitlines()) == {
        place: "ok" if place == "/tmp" else "EROFS" for place in places}
    assert container.ready_after_run < 30


def test_skopeo_pulls_through_the_container_blob_redirect_included(
    container: RunningContainer, testbed: Testbed, tmp_path: Path
) -> None:
    result = testbed.pull(tmp_path / "out", proxy=container.url)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "out", testbed.image)
    allowed = [r for r in container.decisions() if r["decision"] == "allow"]
    assert {r["host"] for r in allowed} == {"us.icr.io", "dd0.icr.io"}
    assert {r["dialed"] for r in allowed} == {"127.0.0.2:443", "127.0.0.3:443"}


def test_a_denied_name_gets_403(container: RunningContainer) -> None:
    answer = refused(container, "evil.example:443")
    assert answer.status == 403 and b"reason: no_rule" in answer.rest
    record = container.wait_for_log(lambda r: r.get("event") == "decision"
                                    and r["host"] == "evil.example")
    assert (record["decision"], record["reason"], record["dialed"]) == ("deny", "no_rule", None)


def test_healthz_metrics_and_the_image_health_check_answer(
    container: RunningContainer
) -> None:
    assert http_status(container.admin_url("/healthz")) == 200
    assert http_status(container.admin_url("/readyz")) == 200
    assert refused(container, "evil.example:443").status == 403
    with urllib.request.urlopen(container.admin_url("/metrics"), timeout=5) as reply:
        metrics = reply.read().decode()
    assert 'portcullis_decisions_total{decision="deny",reason="no_rule",rule=""}' in metrics
    assert "portcullis_active_connections" in metrics
    # The image's own HEALTHCHECK, run inside the container as its user.
    checked = container.healthcheck()
    assert checked.returncode == 0, (checked.stdout, checked.stderr)


def test_sigterm_drains_an_open_tunnel_then_exits_zero(
    container: RunningContainer, testbed: Testbed
) -> None:
    """Last in the module: it stops the container."""
    sock, answer = connect(container.explicit, "us.icr.io:443")
    assert answer.status == 200
    tls = ssl.create_default_context(cafile=str(testbed.ca_pem)).wrap_socket(
        sock, server_hostname="us.icr.io")
    container.kill("TERM")
    container.wait_for_log(lambda r: r.get("msg") == "draining")
    # Draining: /readyz fails while the tunnel is open, new connections are refused.
    assert http_status(container.admin_url("/readyz")) == 503
    with pytest.raises(OSError):
        connect(container.explicit, "us.icr.io:443", timeout=2)
    # The open tunnel still carries a request after SIGTERM.
    tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: us.icr.io\r\nConnection: close\r\n\r\n")
    reply = read_to_close(tls, reset_ok=False)
    tls.close()
    assert reply.startswith((b"HTTP/1.1 200", b"HTTP/1.1 401")), reply[:80]
    assert container.proc.wait(timeout=30) == 0
    container.wait_for_log(lambda r: r.get("msg") == "stopped")
