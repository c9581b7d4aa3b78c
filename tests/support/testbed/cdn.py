"""nginx as the delivery-optimization CDN (`dd0.icr.io`), serving the registry's storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .https import https_request
from .pki import ServerCert
from .procs import ManagedProcess, clean_env, require_binary, require_free


@dataclass(frozen=True)
class CdnConfig:
    address: tuple[str, int]
    name: str
    root: Path  # the registry's storage root: redirect paths map 1:1 onto its files
    cert: ServerCert
    ca_pem: Path
    workdir: Path


@dataclass(frozen=True)
class CdnLogs:
    error: Path
    access: Path


def write_config(cfg: CdnConfig) -> tuple[Path, CdnLogs]:
    w = cfg.workdir / "nginx"
    w.mkdir(parents=True, exist_ok=True)
    logs = CdnLogs(error=cfg.workdir / "cdn-error.log", access=cfg.workdir / "cdn-access.log")
    host, port = cfg.address
    # Every path nginx would otherwise take from its compiled-in defaults
    # (/var/lib/nginx, /run/nginx.pid, /var/log/nginx) is pointed into the run's
    # directory, so runs never collide with each other or with a system nginx.
    temp = "\n".join(
        f"    {kind}_temp_path {w / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {w / "nginx.pid"};
error_log {logs.error} info;
events {{ worker_connections 1024; }}
http {{
{temp}
    access_log {logs.access};
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30s;
    # Like a real CDN edge, no certificate without a known SNI: a client (or a proxy)
    # that loses the name on the way gets a handshake failure, not a wrong cert.
    server {{
        listen {host}:{port} ssl default_server;
        ssl_reject_handshake on;
    }}
    server {{
        listen {host}:{port} ssl;
        server_name {cfg.name};
        ssl_certificate {cfg.cert.cert};
        ssl_certificate_key {cfg.cert.key};
        root {cfg.root};
        autoindex off;
        location / {{ try_files $uri =404; }}
    }}
}}
"""
    path = w / "nginx.conf"
    path.write_text(text)
    return path, logs


def start_cdn(cfg: CdnConfig, *, timeout: float = 10.0) -> tuple[ManagedProcess, CdnLogs, float]:
    binary = require_binary("nginx", "nginx")
    require_free(cfg.address, "CDN (nginx)")
    config_path, logs = write_config(cfg)
    prefix = config_path.parent
    proc = ManagedProcess(
        "nginx",
        # -e: nginx opens its error log before reading the config; without it that is
        # /var/log/nginx/error.log.
        [binary, "-p", str(prefix), "-e", str(logs.error), "-c", str(config_path)],
        cfg.workdir / "cdn-stdout.log",
        clean_env(),
    )

    def probe() -> bool:
        resp = https_request(cfg.name, cfg.address, "/", ca_pem=cfg.ca_pem, timeout=2.0)
        return resp.status in (200, 403, 404)

    try:
        took = proc.wait_ready(probe, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc, logs, took
