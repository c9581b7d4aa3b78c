"""The real testbed: docker-registry with IBM-style redirects, an nginx CDN, a seeded image.

Layout on loopback (docs/semantics.md §8):

    us.icr.io  -> 127.0.0.2:443  docker-registry 2.8, TLS, blob GETs 307 to dd0.icr.io
    dd0.icr.io -> 127.0.0.3:443  nginx serving the registry's storage root

Nothing resolves these names: tests hand `Testbed.hosts` to the proxy's static
resolver overrides, and clients behind the proxy never resolve. Start it with
`start_testbed()` (a context manager) or the `testbed` fixture in tests/e2e.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .cdn import CdnConfig, start_cdn
from .https import AddressedHTTPSConnection, Response, https_request, tls_context
from .image import ImageInfo, write_oci_layout
from .pki import make_pki
from .procs import TestbedError
from .registry import RegistryConfig, start_registry
from .skopeo import skopeo_pull, skopeo_push, verify_pulled

__all__ = [
    "AddressedHTTPSConnection",
    "ImageInfo",
    "Response",
    "Testbed",
    "TestbedError",
    "https_request",
    "skopeo_pull",
    "start_testbed",
    "tls_context",
    "verify_pulled",
]

REGISTRY_NAME = "us.icr.io"
CDN_NAME = "dd0.icr.io"
# Names the registry certificate also covers, for tests that need a second valid name.
REGISTRY_ALT_NAMES = ("de.icr.io", "icr.io")
DEFAULT_REGISTRY_IP = "127.0.0.2"
DEFAULT_CDN_IP = "127.0.0.3"
PORT = 443

# >= 20 MB of incompressible payload in two layers, so a pull moves real volume and
# blob transfers take more than one read on every hop.
APP_LAYERS = [12 * 1024 * 1024, 9 * 1024 * 1024]
SMALL_LAYERS = [64 * 1024]


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a pytest test class despite the name

    workdir: Path
    ca_dir: Path  # for skopeo --src-cert-dir / --dest-cert-dir (holds ca.crt)
    ca_pem: Path  # the same CA as one PEM file, for Python clients
    registry_addr: tuple[str, int]
    cdn_addr: tuple[str, int]
    registry_name: str  # "us.icr.io"
    cdn_name: str  # "dd0.icr.io"
    image_ref: str  # "us.icr.io/ns/app:1", about 21 MiB
    image: ImageInfo
    small_image_ref: str  # "us.icr.io/ns/small:1", one 64 KiB layer: quick pulls
    small_image: ImageInfo
    storage_root: Path  # registry filesystem root == CDN document root
    registry_log: Path
    cdn_error_log: Path
    cdn_access_log: Path
    # For the proxy's static resolver overrides (`resolver.hosts`).
    hosts: dict[str, list[str]]
    timings: dict[str, float] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        return tls_context(self.ca_pem)

    def registry_get(
        self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> Response:
        """A request straight to the registry (no proxy), as `us.icr.io`."""
        return https_request(
            self.registry_name,
            self.registry_addr,
            path,
            ca_pem=self.ca_pem,
            method=method,
            headers=headers,
        )

    def cdn_get(self, path: str, *, method: str = "GET") -> Response:
        """A request straight to the CDN (no proxy), as `dd0.icr.io`."""
        return https_request(self.cdn_name, self.cdn_addr, path, ca_pem=self.ca_pem, method=method)

    def pull(self, dest: Path, *, proxy: str | None, ref: str | None = None,
             timeout: float = 120, netns: str | None = None
             ) -> subprocess.CompletedProcess[str]:
        """skopeo pulls `ref` (the ~21 MiB image unless told) into `dest`, emptied
        first, through `proxy` (see skopeo_pull); check `.returncode`."""
        shutil.rmtree(dest, ignore_errors=True)
        return skopeo_pull(ref or self.image_ref, dest, ca_dir=self.ca_dir, proxy=proxy,
                           timeout=timeout, netns=netns)


@contextlib.contextmanager
def _exclusive(registry_ip: str, cdn_ip: str, wait: float) -> Iterator[None]:
    """Serialize testbeds on the same addresses across concurrent pytest sessions.

    Several sessions may run in one checkout at once; the second one waits for the
    first instead of failing on an address in use.
    """
    path = Path(f"/tmp/portcullis-testbed-{registry_ip}-{cdn_ip}.lock")
    with path.open("a+") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    holder = f.read().strip() or "unknown"
                    raise TestbedError(
                        f"another testbed holds {registry_ip}/{cdn_ip} ({path}, held by pid"
                        f" {holder}) for more than {wait:.0f} s; wait for it, or use other"
                        " addresses: PORTCULLIS_TESTBED_REGISTRY_IP / PORTCULLIS_TESTBED_CDN_IP"
                    ) from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def start_testbed(
    workdir: Path,
    *,
    registry_ip: str | None = None,
    cdn_ip: str | None = None,
    lock_wait: float = 120.0,
    redirect: bool = True,
) -> Iterator[Testbed]:
    """Bring the whole testbed up under `workdir`; everything stops when the block exits.

    Addresses default to 127.0.0.2 / 127.0.0.3, or the environment variables
    PORTCULLIS_TESTBED_REGISTRY_IP / PORTCULLIS_TESTBED_CDN_IP. With `redirect`
    False the registry serves blob bodies itself, as a registry without delivery
    optimization does.
    """
    registry_ip = registry_ip or os.environ.get(
        "PORTCULLIS_TESTBED_REGISTRY_IP", DEFAULT_REGISTRY_IP
    )
    cdn_ip = cdn_ip or os.environ.get("PORTCULLIS_TESTBED_CDN_IP", DEFAULT_CDN_IP)
    registry_addr = (registry_ip, PORT)
    cdn_addr = (cdn_ip, PORT)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    with contextlib.ExitStack() as stack:
        stack.enter_context(_exclusive(registry_ip, cdn_ip, lock_wait))
        timings["lock"] = time.monotonic() - t0

        t = time.monotonic()
        pki = make_pki(
            workdir / "pki",
            registry_names=[REGISTRY_NAME, *REGISTRY_ALT_NAMES, registry_ip],
            cdn_names=[CDN_NAME, cdn_ip],
        )
        timings["pki"] = time.monotonic() - t

        storage_root = workdir / "storage"
        t = time.monotonic()
        registry, timings["registry_ready"] = start_registry(
            RegistryConfig(
                address=registry_addr,
                name=REGISTRY_NAME,
                storage_root=storage_root,
                cert=pki.registry,
                ca_pem=pki.ca_pem,
                redirect_base=f"https://{CDN_NAME}/",
                workdir=workdir,
                redirect=redirect,
            )
        )
        stack.callback(registry.stop)
        cdn, cdn_logs, timings["cdn_ready"] = start_cdn(
            CdnConfig(
                address=cdn_addr,
                name=CDN_NAME,
                root=storage_root,
                cert=pki.cdn,
                ca_pem=pki.ca_pem,
                workdir=workdir,
            )
        )
        stack.callback(cdn.stop)
        timings["servers"] = time.monotonic() - t

        t = time.monotonic()
        app = write_oci_layout(workdir / "layouts" / "app", layer_sizes=APP_LAYERS, seed=1)
        small = write_oci_layout(workdir / "layouts" / "small", layer_sizes=SMALL_LAYERS, seed=2)
        timings["image_write"] = time.monotonic() - t

        t = time.monotonic()
        # By address: the seeding client needs no name resolution and no proxy.
        for name, info in (("app", app), ("small", small)):
            skopeo_push(
                workdir / "layouts" / name,
                info.tag,
                f"{registry_ip}/ns/{name}:{info.tag}",
                ca_dir=pki.ca_dir,
            )
        timings["seed"] = time.monotonic() - t

        bed = Testbed(
            workdir=workdir,
            ca_dir=pki.ca_dir,
            ca_pem=pki.ca_pem,
            registry_addr=registry_addr,
            cdn_addr=cdn_addr,
            registry_name=REGISTRY_NAME,
            cdn_name=CDN_NAME,
            image_ref=f"{REGISTRY_NAME}/ns/app:{app.tag}",
            image=app,
            small_image_ref=f"{REGISTRY_NAME}/ns/small:{small.tag}",
            small_image=small,
            storage_root=storage_root,
            registry_log=registry.log,
            cdn_error_log=cdn_logs.error,
            cdn_access_log=cdn_logs.access,
            hosts={REGISTRY_NAME: [registry_ip], CDN_NAME: [cdn_ip]},
            timings=timings,
        )
        _check_seeded(bed)
        timings["total"] = time.monotonic() - t0
        yield bed


def _check_seeded(bed: Testbed) -> None:
    """The registry must serve the exact manifests we wrote (no conversion on push)."""
    accept = "application/vnd.oci.image.manifest.v1+json"
    for repo, info in (("ns/app", bed.image), ("ns/small", bed.small_image)):
        resp = bed.registry_get(
            f"/v2/{repo}/manifests/{info.tag}", method="HEAD", headers={"Accept": accept}
        )
        served = resp.headers.get("Docker-Content-Digest")
        if resp.status != 200 or served != info.manifest_digest:
            raise TestbedError(
                f"registry serves {repo}:{info.tag} as {resp.status} {served}, expected"
                f" {info.manifest_digest}; see {bed.registry_log}"
            )
