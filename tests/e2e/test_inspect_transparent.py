"""Registry-aware inspection in transparent mode (issue 14, item 6): a worker with
no proxy settings, the `portcullis nftables` redirect in a firewall namespace,
and a registry that serves blobs itself (every byte of the pull crosses the
inspected connection) or redirects them to dd0.icr.io (decided by name).

    worker 10.233.K.2 --veth-- 10.233.K.1  firewall  10.233.K+1.1 --veth-- registry .2
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containerd import hosts_dir, private_containerd
from tests.support.inspection import InspectionCA, inspect_policy, make_ca
from tests.support.netns import Namespaces, inside, namespaces
from tests.support.portcullis_proc import (
    RunningPortcullis,
    apply_redirect,
    run_portcullis,
)
from tests.support.testbed import Testbed, skopeo_pull, start_testbed, verify_pulled

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

K = 16 + (os.getpid() % 100) * 2
WORKER_NET, REGISTRY_NET = f"10.233.{K}", f"10.233.{K + 1}"
WORKER_IP, FW_WORKER_IP = f"{WORKER_NET}.2", f"{WORKER_NET}.1"
FW_REGISTRY_IP, REGISTRY_IP, CDN_IP = f"{REGISTRY_NET}.1", f"{REGISTRY_NET}.2", f"{REGISTRY_NET}.3"


@dataclass
class Net:
    ns: Namespaces
    bed: Testbed
    ca: InspectionCA
    proxy: RunningPortcullis
    redirect: bool  # blobs from dd0.icr.io (decided by name), or from the registry itself

    def pull(self, ref: str, dest: Path, ca_dir: Path) -> subprocess.CompletedProcess[str]:
        return skopeo_pull(ref, dest, ca_dir=ca_dir, proxy=None, timeout=120,
                           netns=self.ns.worker)


def _topology(ns: Namespaces) -> None:
    ns.routed([WORKER_IP], (FW_WORKER_IP, FW_REGISTRY_IP), "registry", [REGISTRY_IP, CDN_IP])
    ns.etc("worker", {
        "hosts": f"127.0.0.1 localhost\n{REGISTRY_IP} us.icr.io\n{CDN_IP} dd0.icr.io\n",
        "resolv.conf": "nameserver 127.0.0.1\n",
    })


@pytest.fixture(scope="module", params=[False, True], ids=["blobs-direct", "dd0-redirect"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    redirect: bool = request.param
    workdir = tmp_path_factory.mktemp("inspect-transparent")
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(namespaces("worker", "firewall", "registry"))
        _topology(ns)
        with inside(ns.registry):
            bed = stack.enter_context(start_testbed(
                workdir / "testbed", registry_ip=REGISTRY_IP, cdn_ip=CDN_IP, redirect=redirect))
        ca = make_ca(workdir, bed)
        policy = inspect_policy(bed, ca, ["ns/small"])
        policy["sources"] = {"workers": [f"{WORKER_NET}.0/24"]}
        policy["listen"]["transparent"] = "0.0.0.0:3129"
        apply_redirect(ns, policy, workdir)
        with inside(ns.firewall):
            proxy = stack.enter_context(run_portcullis(workdir / "portcullis", policy))
        yield Net(ns, bed, ca, proxy, redirect)


def test_allowed_pull(net: Net, tmp_path: Path) -> None:
    result = net.pull(net.bed.small_image_ref, tmp_path / "small", net.ca.trusted_dir)
    assert result.returncode == 0, result.stderr
    verify_pulled(tmp_path / "small", net.bed.small_image)
    decisions = [r for r in net.proxy.decisions() if r["client"] == WORKER_IP]
    expected = {("us.icr.io", "transparent", "allow", "registry-images")}
    if net.redirect:  # the delivery host is decided by name, never decrypted
        expected.add(("dd0.icr.io", "transparent", "allow", "delivery"))
    assert {(r["host"], r["mode"], r["decision"], r["rule"]) for r in decisions} == expected
    audits = net.proxy.records("audit")
    served = {a["digest"] for a in audits if a.get("digest")}
    assert served == {net.bed.small_image.manifest_digest}
    closes = net.proxy.records("close")
    assert sum(c["bytes_down"] for c in closes) >= net.bed.small_image.total_size


def test_another_repository_is_denied_and_skopeo_prints_why(net: Net, tmp_path: Path) -> None:
    result = net.pull(net.bed.image_ref, tmp_path / "app", net.ca.trusted_dir)
    assert result.returncode != 0
    stderr = result.stderr
    assert "portcullis: repository ns/app is not allowed" in stderr, stderr
    net.proxy.wait_for_log(lambda r: r.get("event") == "audit"
                           and r.get("reason") == "repository_denied")


def test_a_worker_without_the_ca_fails_with_client_untrusted_ca(net: Net, tmp_path: Path
                                                                ) -> None:
    result = net.pull(net.bed.small_image_ref, tmp_path / "x", net.ca.testbed_only_dir)
    assert result.returncode != 0
    record = net.proxy.wait_for_log(lambda r: r.get("event") == "decision"
                                    and r.get("reason") == "client_untrusted_ca")
    assert (record["mode"], record["host"], record["decision"]) == (
        "transparent", "us.icr.io", "deny")


def test_containerd_pulls_through_the_redirect_and_is_denied_another(
    net: Net, tmp_path: Path
) -> None:
    hosts = hosts_dir(tmp_path / "hosts", "us.icr.io", [net.bed.ca_pem, net.ca.cert])
    mark = len(net.proxy.records("audit"))
    with private_containerd(tmp_path / "containerd") as containerd:
        pulled = containerd.pull(net.bed.small_image_ref, hosts, netns=net.ns.worker)
        assert pulled.returncode == 0, pulled.stderr + pulled.stdout
        denied = containerd.pull(net.bed.image_ref, hosts, netns=net.ns.worker)
        assert denied.returncode != 0
        output = denied.stderr + denied.stdout
        assert "portcullis: repository ns/app is not allowed" in output, output
    served = [a for a in net.proxy.records("audit")[mark:] if a.get("digest")]
    assert {a["digest"] for a in served} == {net.bed.small_image.manifest_digest}
