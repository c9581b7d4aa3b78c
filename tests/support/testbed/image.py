"""Write an OCI image layout from Python, byte-for-byte reproducible from a seed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# gzip, not plain tar: a registry destination makes containers/image compress
# uncompressed layers on push, which would change every layer digest and the
# manifest under our feet.
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class ImageInfo:
    """What a pull of the image must reproduce, digest for digest."""

    tag: str
    manifest_digest: str
    manifest_size: int
    config_digest: str
    layer_digests: tuple[str, ...]
    layer_sizes: tuple[int, ...]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)

    @property
    def total_size(self) -> int:
        return sum(self.layer_sizes)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put_blob(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.write_bytes(data)
    return digest


def _layer(rng: random.Random, index: int, size: int) -> tuple[bytes, bytes]:
    """One layer holding `size` random bytes; returns (uncompressed tar, gzip of it)."""
    payload = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"portcullis/layer-{index}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    # mtime=0 and no file name in the header keep the digest a function of the seed.
    gz = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return tar_bytes, gz


def write_oci_layout(
    layout: Path, *, layer_sizes: list[int], seed: int, tag: str = "1"
) -> ImageInfo:
    """Write an OCI layout with one image tagged `tag`, one layer per size.

    The payload is random (seeded), hence incompressible: what crosses the wire is
    as large as `sum(layer_sizes)`, so byte-counting tests see real volume.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    rng = random.Random(seed)
    digests: list[str] = []
    sizes: list[int] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layer_sizes):
        tar_bytes, gz = _layer(rng, i, size)
        diff_ids.append(_digest(tar_bytes))
        digests.append(_put_blob(layout, gz))
        sizes.append(len(gz))
    config = json.dumps(
        {
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.portcullis.testbed.seed": str(seed)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "1970-01-01T00:00:00Z", "comment": "portcullis testbed"}]
            * len(layer_sizes),
        },
        sort_keys=True,
    ).encode()
    config_digest = _put_blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": d, "size": n}
                for d, n in zip(digests, sizes, strict=True)
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _put_blob(layout, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return ImageInfo(
        tag=tag,
        manifest_digest=manifest_digest,
        manifest_size=len(manifest),
        config_digest=config_digest,
        layer_digests=tuple(digests),
        layer_sizes=tuple(sizes),
    )
