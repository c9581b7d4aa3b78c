"""docker-registry (distribution 2.8) with TLS and IBM-style blob redirects."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from .https import https_request
from .pki import ServerCert
from .procs import ManagedProcess, clean_env, require_binary, require_free


@dataclass(frozen=True)
class RegistryConfig:
    address: tuple[str, int]
    name: str  # presented in SNI/Host by the readiness probe
    storage_root: Path
    cert: ServerCert
    ca_pem: Path
    redirect_base: str  # e.g. "https://dd0.icr.io/"
    workdir: Path
    redirect: bool = True  # False: the registry serves blobs itself (no delivery host)


def write_config(cfg: RegistryConfig) -> Path:
    # JSON is YAML, and json.dumps quotes every path correctly.
    doc: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(cfg.storage_root)},
            "delete": {"enabled": True},
            "redirect": {"disable": False},
            # A fresh in-memory descriptor cache per run; nothing shared with other runs.
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"{cfg.address[0]}:{cfg.address[1]}",
            "secret": secrets.token_hex(16),
            "tls": {"certificate": str(cfg.cert.cert), "key": str(cfg.cert.key)},
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": False}},
        # The 2.8 redirect middleware keeps only scheme and host of baseurl and
        # appends the driver path, so a blob GET/HEAD answers
        # 307 Location: https://dd0.icr.io/docker/registry/v2/blobs/sha256/xx/<hex>/data
        "middleware": {
            "storage": [{"name": "redirect", "options": {"baseurl": cfg.redirect_base}}]
        },
    }
    if not cfg.redirect:
        del doc["middleware"]
    path = cfg.workdir / "registry.yml"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def start_registry(cfg: RegistryConfig, *, timeout: float = 10.0) -> tuple[ManagedProcess, float]:
    """Start the registry and wait until GET /v2/ answers over verified TLS.

    Returns the process (the caller must stop it) and the seconds to readiness.
    """
    binary = require_binary("docker-registry", "docker-registry")
    require_free(cfg.address, "registry (docker-registry)")
    cfg.storage_root.mkdir(parents=True, exist_ok=True)
    config_path = write_config(cfg)
    proc = ManagedProcess(
        "docker-registry",
        [binary, "serve", str(config_path)],
        cfg.workdir / "registry.log",
        clean_env(),
    )

    def probe() -> bool:
        resp = https_request(cfg.name, cfg.address, "/v2/", ca_pem=cfg.ca_pem, timeout=2.0)
        return resp.status in (200, 401)

    try:
        took = proc.wait_ready(probe, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc, took
