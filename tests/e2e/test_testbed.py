"""Self-tests of the testbed, without any proxy: each part answers as the proxy will see it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from tests.support.testbed import (
    AddressedHTTPSConnection,
    Testbed,
    https_request,
    skopeo_pull,
    verify_pulled,
)
from tests.support.testbed.image import ImageInfo, write_oci_layout
from tests.support.testbed.squid import ReferenceProxy

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]

BLOB_LOCATION = re.compile(
    r"^https://dd0\.icr\.io(/docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data)$"
)


def test_registry_answers_v2_over_tls_verified_for_its_name(testbed: Testbed) -> None:
    resp = testbed.registry_get("/v2/")
    assert resp.status in (200, 401)
    assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


@pytest.mark.parametrize("name", ["de.icr.io", "icr.io"])
def test_registry_certificate_covers_the_other_names(testbed: Testbed, name: str) -> None:
    assert https_request(name, testbed.registry_addr, "/v2/", ca_pem=testbed.ca_pem).status == 200


def test_registry_certificate_rejects_an_unrelated_name(testbed: Testbed) -> None:
    # Proves the check is real: the same address, a name the certificate lacks.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request("example.com", testbed.registry_addr, "/v2/", ca_pem=testbed.ca_pem)


def test_registry_serves_the_seeded_manifests_unchanged(testbed: Testbed) -> None:
    resp = testbed.registry_get(
        "/v2/ns/app/manifests/1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    assert resp.status == 200
    assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == testbed.image.manifest_digest
    assert resp.headers["Docker-Content-Digest"] == testbed.image.manifest_digest
    layers = [layer["digest"] for layer in json.loads(resp.body)["layers"]]
    assert tuple(layers) == testbed.image.layer_digests


def test_image_is_big_enough_to_matter(testbed: Testbed) -> None:
    assert len(testbed.image.layer_digests) >= 2
    assert testbed.image.total_size >= 20 * 1024 * 1024


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_blob_requests_redirect_to_the_cdn_like_ibm(testbed: Testbed, method: str) -> None:
    digest = testbed.image.layer_digests[0]
    resp = testbed.registry_get(f"/v2/ns/app/blobs/{digest}", method=method)
    assert resp.status == 307
    m = BLOB_LOCATION.match(resp.headers["Location"])
    assert m, resp.headers["Location"]
    hexdigest = digest.removeprefix("sha256:")
    assert (m.group(2), m.group(3)) == (hexdigest[:2], hexdigest)


def test_cdn_serves_every_redirected_blob_byte_exact(testbed: Testbed) -> None:
    for digest in testbed.image.blob_digests:
        location = testbed.registry_get(f"/v2/ns/app/blobs/{digest}").headers["Location"]
        m = BLOB_LOCATION.match(location)
        assert m, location
        resp = testbed.cdn_get(m.group(1))
        assert resp.status == 200, f"{location}: {resp.status}"
        assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == digest


def test_cdn_refuses_a_handshake_without_its_name(testbed: Testbed) -> None:
    # Certificate verification is off so only nginx's refusal can fail the handshake.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = AddressedHTTPSConnection("other.icr.io", testbed.cdn_addr, context=ctx)
    with pytest.raises(ssl.SSLError, match=r"UNRECOGNIZED_NAME|unrecognized name"):
        conn.request("GET", "/")
    conn.close()


def test_hosts_mapping_matches_the_listeners(testbed: Testbed) -> None:
    assert testbed.hosts == {
        "us.icr.io": [testbed.registry_addr[0]],
        "dd0.icr.io": [testbed.cdn_addr[0]],
    }
    assert testbed.image_ref == "us.icr.io/ns/app:1"
    assert testbed.registry_addr[1] == testbed.cdn_addr[1] == 443


def test_logs_record_the_traffic(testbed: Testbed) -> None:
    testbed.registry_get("/v2/")
    testbed.cdn_get("/")
    assert "GET /v2/ HTTP/1.1" in testbed.registry_log.read_text()
    assert "GET / HTTP/1.1" in testbed.cdn_access_log.read_text()


def _as_dir_transport(layout: Path, info: ImageInfo, dest: Path) -> None:
    """What `skopeo copy ... dir:DEST` writes: manifest.json, version, blobs by hex."""
    dest.mkdir()
    blobs = layout / "blobs" / "sha256"
    shutil.copy(blobs / info.manifest_digest.removeprefix("sha256:"), dest / "manifest.json")
    (dest / "version").write_text("Directory Transport Version: 1.1\n")
    for digest in info.blob_digests:
        hexdigest = digest.removeprefix("sha256:")
        shutil.copy(blobs / hexdigest, dest / hexdigest)


def test_layout_is_reproducible_and_verify_pulled_catches_corruption(tmp_path: Path) -> None:
    sizes = [4096, 8192]
    a = write_oci_layout(tmp_path / "a", layer_sizes=sizes, seed=7)
    b = write_oci_layout(tmp_path / "b", layer_sizes=sizes, seed=7)
    assert a == b
    assert write_oci_layout(tmp_path / "c", layer_sizes=sizes, seed=8) != a

    good = tmp_path / "pulled"
    _as_dir_transport(tmp_path / "a", a, good)
    verify_pulled(good, a)

    layer = good / a.layer_digests[1].removeprefix("sha256:")
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="corrupt"):
        verify_pulled(good, a)

    layer.unlink()
    with pytest.raises(AssertionError, match="missing"):
        verify_pulled(good, a)

    with pytest.raises(AssertionError, match="manifest digest"):
        verify_pulled(good, dataclasses.replace(a, manifest_digest="sha256:" + "0" * 64))


@pytest.mark.parametrize("which", ["image", "small_image"])
def test_skopeo_pull_through_a_reference_proxy_follows_the_redirect(
    testbed: Testbed, reference_proxy: ReferenceProxy, tmp_path: Path, which: str
) -> None:
    expected: ImageInfo = getattr(testbed, which)
    ref = testbed.image_ref if which == "image" else testbed.small_image_ref
    dest = tmp_path / "pulled"
    result = skopeo_pull(ref, dest, ca_dir=testbed.ca_dir, proxy=reference_proxy.url, timeout=60)
    assert result.returncode == 0, result.stderr
    verify_pulled(dest, expected)
    # Both names went through the proxy: the registry and, for the blobs, the CDN.
    tunnels = reference_proxy.access_log.read_text()
    assert f"CONNECT us.icr.io:443 - HIER_DIRECT/{testbed.registry_addr[0]}" in tunnels
    assert f"CONNECT dd0.icr.io:443 - HIER_DIRECT/{testbed.cdn_addr[0]}" in tunnels


def test_skopeo_pull_fails_cleanly_when_the_proxy_is_gone(testbed: Testbed, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening
        result = skopeo_pull(
            testbed.small_image_ref, tmp_path / "x", ca_dir=testbed.ca_dir, proxy=dead, timeout=30
        )
    assert result.returncode != 0
    assert "connection refused" in result.stderr.lower(), result.stderr
