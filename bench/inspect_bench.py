"""Inspection: a 1 GiB blob and connection set-up through Portcullis inspecting
(`inspect:`) against Squid with ssl-bump (`squid-openssl`), in one run, beside
the same proxies tunnelling without decrypting (issue 14, item 7).

    .venv/bin/python -m bench.inspect_bench [--rounds 3] [--duration 5] [--no-write]

The origin is the bench's nginx, serving the blob at its registry path
(`/v2/bench/big/blobs/sha256:...`, the registry serving blobs itself, no
redirect) and `/v2/` for the set-up requests. Squid's ssl-bump needs the
OpenSSL build: the system's squid when it is one, otherwise Debian's
`squid-openssl` unpacked (not installed: it conflicts with `squid`) under
/var/cache/portcullis-bench. Writes its own section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import trustme

from bench import bulk, connrate, procfs, servers
from bench.run import Report, fmt, ratio, table
from bench.servers import BULK_SIZE, ORIGIN_NAME, Server, Workdir

HERE = Path(__file__).resolve().parent
CACHE = Path("/var/cache/portcullis-bench/squid-openssl")
BEGIN = "<!-- inspection: written by bench/inspect_bench.py -->"
END = "<!-- end of the inspection part -->"
PING = "/v2/"


def squid_openssl() -> Path:
    """The root of a squid built with OpenSSL (`/` for the system's own)."""
    version = subprocess.run(["squid", "-v"], capture_output=True, text=True).stdout
    if "--with-openssl" in version:
        return Path("/")
    root = CACHE / "root"
    if not (root / "usr/sbin/squid").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "squid-openssl"], cwd=CACHE, check=True,
                       capture_output=True)
        deb = next(CACHE.glob("squid-openssl_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def blob_path(work: Workdir) -> str:
    """Lay the 1 GiB sparse blob and the ping answer out as a registry serves them."""
    digest = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(BULK_SIZE >> 20):
        digest.update(zeros)
    path = f"/v2/bench/big/blobs/sha256:{digest.hexdigest()}"
    target = work.root / "www" / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        f.truncate(BULK_SIZE)
    (work.root / "www/v2/index.html").write_text("{}" + " " * 1100)  # >= the 1 KiB check
    for p in (work.root / "www").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def start_portcullis_inspecting(work: Workdir) -> tuple[Server, Path]:
    d = work.sub("portcullis-inspect")
    subprocess.run([sys.executable, "-m", "portcullis.cli", "ca", "init", "--out",
                    str(d / "ca"), "--name", ORIGIN_NAME], check=True, capture_output=True)
    policy = servers.portcullis_policy(servers.free_port())
    rule = policy["rules"][0]  # type: ignore[index]
    rule["inspect"] = {"repositories": ["bench/**"], "access": "pull"}
    policy["tls_inspection"] = {"ca_cert": str(d / "ca/ca.pem"),
                                "ca_key": str(d / "ca/ca-key.pem"),
                                "upstream_ca": [str(work.ca_pem)]}
    return (servers.launch_portcullis(d, policy, label="portcullis inspect"),
            d / "ca/ca.pem")


def start_squid_bump(work: Workdir) -> tuple[Server, Path]:
    root = squid_openssl()
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    d = work.sub("squid-bump", owner="proxy")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.private_key_pem.write_to_path(str(d / "ca-key.pem"))
    db = d / "ssl_db"
    certgen = root / "usr/lib/squid/security_file_certgen"
    subprocess.run([str(certgen), "-c", "-s", str(db), "-M", "16MB"], check=True,
                   capture_output=True)
    shutil.chown(db, "proxy", "proxy")
    for p in db.rglob("*"):
        shutil.chown(p, "proxy", "proxy")
    extra = f"""\
sslcrtd_program {certgen} -s {db} -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={work.ca_pem}
sslproxy_cert_error deny all
"""
    options = (f"ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB"
               f" tls-cert={d / 'ca.pem'} tls-key={d / 'ca-key.pem'}")
    server = servers.start_squid(work, label="squid ssl-bump", binary=str(root / "usr/sbin/squid"),
                                 port_options=options, extra=extra)
    return server, d / "ca.pem"


def run(report: Report, work: Workdir, origin: Server, rounds: int, duration: float) -> None:
    path = blob_path(work)
    tunnel_ca = str(work.ca_pem)
    started: list[Server] = []
    try:
        plain_p = servers.start_portcullis(work)
        started.append(plain_p)
        plain_s = servers.start_squid(work)
        started.append(plain_s)
        inspecting, p_ca = start_portcullis_inspecting(work)
        started.append(inspecting)
        bump, s_ca = start_squid_bump(work)
        started.append(bump)
        targets: dict[str, tuple[Server | None, str]] = {
            "direct": (None, tunnel_ca), "portcullis tunnel": (plain_p, tunnel_ca),
            "squid tunnel": (plain_s, tunnel_ca), "portcullis inspect": (inspecting, str(p_ca)),
            "squid ssl-bump": (bump, str(s_ca)),
        }
        _bulk(report, targets, origin, path, rounds)
        _setup(report, targets, duration)
    finally:
        for server in started:
            server.stop()


def _bulk(report: Report, targets: dict[str, tuple[Server | None, str]], origin: Server,
          path: str, rounds: int) -> None:
    runs: dict[str, list[bulk.BulkResult]] = {name: [] for name in targets}
    for _ in range(rounds):  # interleaved: drift on the shared machine hits all alike
        for name, (proxy, ca) in targets.items():
            runs[name].append(bulk.download(ca, proxy, origin, path=path))
    speed = {n: statistics.median(r.mib_s for r in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(r.proxy_cpu_s_per_gib or 0.0 for r in rs)
           for n, rs in runs.items() if n != "direct"}
    bump_speed, bump_cpu = speed["squid ssl-bump"], cpu["squid ssl-bump"]
    rows = [[n, fmt(speed[n], ".0f"), ratio(speed[n], speed["direct"]),
             fmt(cpu.get(n), ".3f"), ratio(cpu.get(n), bump_cpu)] for n in targets]
    report.target("inspected bulk throughput", ">= Squid ssl-bump",
                  ratio(speed["portcullis inspect"], bump_speed),
                  speed["portcullis inspect"] >= bump_speed)
    report.target("inspected bulk CPU/GiB", "<= Squid ssl-bump",
                  ratio(cpu["portcullis inspect"], bump_cpu), cpu["portcullis inspect"] <= bump_cpu)
    report.section(
        f"Inspected bulk: a 1 GiB blob, registry path, no redirect (median of {rounds})",
        table(["target", "MiB/s", "x direct", "proxy CPU s/GiB", "x Squid ssl-bump"], rows))


def _setup(report: Report, targets: dict[str, tuple[Server | None, str]], duration: float
           ) -> None:
    rows = []
    for name, (proxy, ca) in targets.items():
        r = connrate.measure(ca, proxy, duration, path=PING)
        rows.append([name, fmt(r.rate, ".0f"), fmt(r.p50_ms), fmt(r.p99_ms),
                     fmt(r.cpu_us_per_conn, ".0f"), str(r.errors)])
    report.section(
        f"Set-up: CONNECT + TLS + GET {PING} + close, {connrate.CLIENTS} concurrent"
        f" ({duration:.0f} s)",
        table(["target", "conn/s", "p50 ms", "p99 ms", "proxy CPU us/conn", "errors"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=connrate.DURATION)
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    servers.raise_nofile()
    report = Report()
    info = procfs.machine()
    command = " ".join(["python -m bench.inspect_bench", *sys.argv[1:]])
    with Workdir.create() as work:
        origin = servers.start_nginx(work)
        try:
            run(report, work, origin, args.rounds, args.duration)
        finally:
            origin.stop()
    targets = table(["target", "goal", "measured", "met"],
                    [[w, g, m, "yes" if ok else "**no**"] for w, g, m, ok in report.targets])
    print("### Targets (issue 14)\n\n" + targets)
    if args.write:
        machine = ", ".join(f"{k} {v}" for k, v in info.items())
        text = (f"## Inspection against Squid ssl-bump (issue 14)\n\n`{command}`; machine:"
                f" {machine}.\n\n{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n"
                f"### Targets (issue 14)\n\n{targets}\n\n" + "\n".join(report.sections))
        path = HERE / "RESULTS.md"
        old = path.read_text()
        block = f"{BEGIN}\n{text.rstrip()}\n{END}"
        if BEGIN in old and END in old:
            head, _, rest = old.partition(BEGIN)
            old = head.rstrip() + "\n\n" + rest.partition(END)[2].lstrip()
        path.write_text(old.rstrip() + "\n\n" + block + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
