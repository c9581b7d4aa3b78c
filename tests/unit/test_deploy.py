"""deploy/: the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate, offline) and against each other, the container recipe, the
containerd/CRI-O drop-ins read with Go's NO_PROXY rules, and the systemd unit
with `systemd-analyze verify` and its offline security report."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from portcullis.basics.hostport import parse_hostport
from portcullis.config import parse_policy
from portcullis.policy.engine import Engine
from portcullis.tools.noproxy import NoProxy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ["1.28", kubernetes_validate.utils.latest_version()]


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


# --- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} == {
        "Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_catches_a_misspelt_field() -> None:
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name != "kustomization.yaml")


def test_deployment_is_replicated_spread_and_locked_down() -> None:
    deployment = one("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1000
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # Writable only where mounted: /tmp, in memory.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/portcullis", "/tmp"}
    assert mounts["/etc/portcullis"]["readOnly"] is True


def test_probes_hit_the_admin_endpoints_of_the_policy_in_the_configmap() -> None:
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    policy = parse_policy(one("ConfigMap")["data"]["policy.yaml"], "configmap")
    assert policy.listen.admin and policy.listen.explicit
    assert parse_hostport(policy.listen.admin) == ("0.0.0.0", ports["admin"])
    assert parse_hostport(policy.listen.explicit) == ("0.0.0.0", ports["proxy"])
    # The kubelet probes from the node: its address must pass admin_allow.
    assert any(ipaddress.ip_address("10.1.2.3") in n for n in policy.admin_allow)
    # Probe timings: a drain (readyz failing) is seen before the grace period ends.
    pod = one("Deployment")["spec"]["template"]["spec"]
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < policy.limits.drain_timeout
    assert pod["terminationGracePeriodSeconds"] > policy.limits.drain_timeout


def test_configmap_is_mounted_as_a_directory_so_updates_reach_the_pod() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/portcullis"]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert volumes[mount["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    args = container["args"]
    assert args[args.index("-c") + 1] == "/etc/portcullis/policy.yaml"
    assert "policy.yaml" in one("ConfigMap")["data"]


def test_configmap_policy_is_deploy_policy_and_valid() -> None:
    text = one("ConfigMap")["data"]["policy.yaml"]
    assert text == (DEPLOY / "policy.yaml").read_text()
    engine = Engine(parse_policy(text, "configmap"))
    assert engine.decide(ipaddress.ip_address("10.0.0.7"), "us.icr.io", 443).allowed
    assert not engine.decide(ipaddress.ip_address("10.0.0.7"), "example.com", 443).allowed


def test_service_pdb_hpa_and_networkpolicy_point_at_the_deployment() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    netpol = one("NetworkPolicy")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ingress_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {3128, 9090}
    egress = {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]}
    assert egress == {53, 443}
    # The network layer refuses what Portcullis's address checks refuse.
    (public,) = [r for r in netpol["spec"]["egress"] if r["ports"][0]["port"] == 443]
    excepted = [ipaddress.ip_network(c) for c in public["to"][0]["ipBlock"]["except"]]
    for address in ("169.254.169.254", "10.1.1.1", "192.168.1.1", "127.0.0.1", "100.64.0.1"):
        assert any(ipaddress.ip_address(address) in n for n in excepted), address
    for manifest in manifests():
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- container image ------------------------------------------------------------------------


def test_containerfile_runs_unprivileged_on_a_read_only_root() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#") and line[0] != " "]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]{3,}:[1-9][0-9]{3,}", users[-1].strip())
    # The final stage's user is the Deployment's, so runAsNonRoot can check it.
    uid = int(users[-1].split(":")[0])
    assert one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "compileall" in text
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {3128, 9090}
    for word, rest in instructions:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (DEPLOY.parent / source).exists(), source


def test_containerfile_takes_its_base_as_an_argument_and_runs_python3() -> None:
    """Any Debian-like base with `python3` builds it (issue 16): the official slim
    image by default, a debootstrapped bookworm in tests/e2e/test_container_image.py."""
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    first = lines[0].split()
    assert first[0] == "ARG" and first[1].startswith("BASE=")
    assert first[1].partition("=")[2].startswith("docker.io/library/python:3.11-slim")
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms == ["${BASE}", "${BASE}"]
    # Debian's interpreter is only `python3`; the venv's own `python` comes after.
    runs = " ".join(line for line in lines if line.startswith(("RUN", " &&")))
    assert "python3 -m venv /opt/portcullis" in runs
    assert not re.search(r"(^|[\s&;])python\s", runs)


def test_build_context_admits_exactly_what_the_containerfile_copies() -> None:
    """.dockerignore (read by podman and docker) lets in what COPY names, and keeps a
    checkout's leftovers (.venv, __pycache__, egg-info) out of the image."""
    patterns = [line.strip() for line in (DEPLOY.parent / ".dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    copied = {source for line in (DEPLOY / "Containerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line
              for source in line.split()[1:-1]}
    assert admitted == copied
    assert {"**/__pycache__", "**/*.egg-info"} <= set(patterns)


def test_readme_shows_the_image_build_and_run_with_the_ulimit_note() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    assert "podman build --format docker --build-arg BASE=" in readme  # HEALTHCHECK kept
    assert "docker build -f deploy/Containerfile" in readme
    assert "--read-only" in readme and "--ulimit nofile=" in readme
    assert "--ulimit nproc=" in readme and "rlimit type 7" in readme


# --- containerd and CRI-O drop-ins ---------------------------------------------------------------


def go_bypasses(no_proxy: str, host: str) -> bool:
    """Go's NO_PROXY (golang.org/x/net/http/httpproxy), as `check` reads it."""
    return NoProxy.parse(no_proxy).bypass(host, 443) is not None


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> key -> every value, in order (a key may
    repeat, as Environment= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def drop_in_environment(path: Path) -> dict[str, str]:
    env = {}
    for item in unit_settings(path)["Service"]["Environment"]:
        key, _, value = item.strip('"').partition("=")
        env[key] = value
    return env


@pytest.mark.parametrize("runtime", ["containerd", "crio"])
def test_runtime_drop_ins_send_registries_through_the_proxy_and_nothing_internal(
    runtime: str,
) -> None:
    env = drop_in_environment(DEPLOY / runtime / "http-proxy.conf")
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"]
    assert re.fullmatch(r"http://[0-9.]+:3128", env["HTTPS_PROXY"])
    no_proxy = env["NO_PROXY"]
    policy = parse_policy((DEPLOY / "policy.yaml").read_text(), "policy")
    for rule in Engine(policy).rules:
        for name in rule.destinations:
            assert not go_bypasses(no_proxy, name.removeprefix("*.")), name
    for host in ("us.icr.io", "dd0.icr.io", "registry-1.docker.io", "quay.io"):
        assert not go_bypasses(no_proxy, host)
    for host in ("localhost", "127.0.0.1", "::1", "kubernetes.default.svc",
                 "registry.kube-system.svc.cluster.local", "10.96.0.1", "10.244.3.7"):
        assert go_bypasses(no_proxy, host), host


# --- systemd --------------------------------------------------------------------------------------


def _unit_copy(tmp: Path, with_drop_in: bool) -> Path:
    """The unit with ExecStart pointing at this checkout's portcullis, because
    verify checks that the program exists."""
    binary = str(Path(sys.executable).with_name("portcullis"))
    unit = tmp / "portcullis.service"
    unit.write_text((DEPLOY / "systemd/portcullis.service").read_text()
                    .replace("/opt/portcullis/bin/portcullis", binary))
    if with_drop_in:
        (tmp / "portcullis.service.d").mkdir()
        (tmp / "portcullis.service.d/transparent.conf").write_text(
            (DEPLOY / "systemd/portcullis.service.d/transparent.conf").read_text()
            .replace("/opt/portcullis/bin/portcullis", binary))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing (Debian package systemd)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for portcullis\.service: ([0-9.]+)", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.parametrize("with_drop_in", [False, True])
def test_systemd_unit_verifies_clean_and_scores_as_hardened(
    tmp_path: Path, with_drop_in: bool
) -> None:
    unit = _unit_copy(tmp_path, with_drop_in)
    result = _analyze("verify", str(unit))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr
    report = _analyze("security", "--offline=yes", "--no-pager", str(unit))
    assert report.returncode == 0, report.stderr
    exposure = _exposure(report.stdout)
    # 0 is a fully locked unit, 10 an unconfined one; "OK" is below 3.
    assert exposure <= (2.0 if with_drop_in else 1.5), report.stdout
    (net_admin,) = [line for line in report.stdout.splitlines()
                    if "CapabilityBoundingSet=~CAP_NET_ADMIN" in line]
    # Only the transparent drop-in grants a capability, and only this one.
    assert net_admin.lstrip().startswith("✗" if with_drop_in else "✓"), net_admin
    granted = [line for line in report.stdout.splitlines()
               if "CapabilityBoundingSet=~" in line and line.lstrip().startswith("✗")]
    assert granted == ([net_admin] if with_drop_in else [])


def test_systemd_unit_is_dynamic_user_strict_and_capability_free() -> None:
    service = unit_settings(DEPLOY / "systemd/portcullis.service")["Service"]
    assert service["DynamicUser"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["CapabilityBoundingSet"] == [""] and service["AmbientCapabilities"] == [""]
    assert service["NoNewPrivileges"] == ["yes"]
    assert "--workers" in service["ExecStart"][0]
    drop_in = unit_settings(DEPLOY / "systemd/portcullis.service.d/transparent.conf")["Service"]
    assert drop_in["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert drop_in["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]


def test_systemd_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path, False)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    assert "Unknown key 'ProtectSytem'" in _analyze("verify", str(unit)).stderr
