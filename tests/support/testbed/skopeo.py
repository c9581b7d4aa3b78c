"""skopeo as the real registry client: seeding images, pulling them, checking the result."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from .image import ImageInfo
from .procs import TestbedError, clean_env, require_binary

# The policy check is about signatures, which the testbed does not exercise;
# --insecure-policy keeps the run independent of /etc/containers/policy.json.
_GLOBAL = ["--insecure-policy"]


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        raise AssertionError(
            f"skopeo did not finish within {timeout} s: {' '.join(argv)}\nstderr so far:\n{err}"
        ) from exc


def skopeo_push(
    layout: Path, tag: str, dest: str, *, ca_dir: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Copy `oci:LAYOUT:TAG` to `docker://DEST` directly (no proxy), digests preserved."""
    binary = require_binary("skopeo", "skopeo")
    argv = [
        binary,
        *_GLOBAL,
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-no-creds",
        "--dest-cert-dir",
        str(ca_dir),
        f"oci:{layout}:{tag}",
        f"docker://{dest}",
    ]
    result = _run(argv, clean_env(), timeout)
    if result.returncode != 0:
        raise TestbedError(
            f"seeding {dest} failed (exit {result.returncode}): {' '.join(argv)}\n{result.stderr}"
        )
    return result


def skopeo_pull(
    ref: str,
    dest_dir: Path,
    *,
    ca_dir: Path,
    proxy: str | None,
    timeout: float,
    extra_args: list[str] | None = None,
    netns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`skopeo copy docker://REF dir:DEST_DIR`, through `proxy` when given.

    With `netns`, skopeo runs under `ip netns exec NETNS`: in that network
    namespace, with /etc/netns/NETNS/hosts as its /etc/hosts.

    With a proxy, HTTPS_PROXY/HTTP_PROXY (both spellings) point at it and
    NO_PROXY/no_proxy are removed, so every connection - registry and redirected
    CDN alike - goes through it. Without one, any inherited proxy variables are
    removed too: the pull is then direct, and only works where the names resolve.
    Note that Go never proxies requests to `localhost` or loopback literals; use names.

    Returns the finished process (check `.returncode`, `.stderr`); raises
    AssertionError if it runs past `timeout`.
    """
    binary = require_binary("skopeo", "skopeo")
    extra = {}
    if proxy is not None:
        extra = {k: proxy for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
    argv = [
        binary,
        *_GLOBAL,
        "copy",
        "--retry-times",
        "0",
        "--src-no-creds",
        "--src-cert-dir",
        str(ca_dir),
        *(extra_args or []),
        f"docker://{ref}",
        f"dir:{dest_dir}",
    ]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return _run(argv, clean_env(extra), timeout)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def verify_pulled(dest_dir: Path, expected: ImageInfo) -> None:
    """Assert that a `dir:` pull holds exactly the expected image, every byte checked."""
    manifest_path = dest_dir / "manifest.json"
    assert manifest_path.is_file(), f"no manifest.json in {dest_dir}: the pull did not finish"
    got = _sha256_file(manifest_path)
    assert got == expected.manifest_digest, (
        f"manifest digest {got} != expected {expected.manifest_digest}"
        " (the registry served, or skopeo rewrote, a different manifest)"
    )
    manifest = json.loads(manifest_path.read_bytes())
    listed = (manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"]))
    assert listed == expected.blob_digests, (
        f"manifest lists {listed}, expected {expected.blob_digests}"
    )
    for digest in expected.blob_digests:
        blob = dest_dir / digest.removeprefix("sha256:")
        assert blob.is_file(), f"blob {digest} missing from {dest_dir}"
        actual = _sha256_file(blob)
        assert actual == digest, (
            f"blob {blob.name} is corrupt: its sha256 is {actual}, size {blob.stat().st_size}"
        )
    for digest, size in zip(expected.layer_digests, expected.layer_sizes, strict=True):
        actual_size = (dest_dir / digest.removeprefix("sha256:")).stat().st_size
        assert actual_size == size, f"layer {digest}: {actual_size} bytes, expected {size}"
    known = {
        "manifest.json",
        "version",
        *(d.removeprefix("sha256:") for d in expected.blob_digests),
    }
    for extra in sorted(p.name for p in dest_dir.iterdir() if p.name not in known):
        raise AssertionError(f"unexpected file {extra!r} in {dest_dir}")
