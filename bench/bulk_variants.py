"""Bulk through Portcullis with the relay's byte path varied: splice with several
pipe sizes, and the copy fallback with several buffer sizes (bench/findings.md).

    .venv/bin/python -m bench.bulk_variants [--rounds 3]

Each variant is a `portcullis serve` whose relay module settings are changed
before the CLI starts (`--serve MODE SIZE`, internal). Prints the median
throughput and the proxy's, curl's and nginx's CPU seconds per GiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import yaml

from bench import bulk, servers

VARIANTS = [("splice", 1 << 20), ("splice", 256 << 10), ("splice", 64 << 10),
            ("copy", 256 << 10), ("copy", 1 << 20)]


def serve_variant(mode: str, size: int, argv: list[str]) -> None:
    from portcullis.proxy import copying, pipes, relay

    relay.USE_SPLICE = relay.USE_SPLICE and mode == "splice"
    pipes.PIPE_SIZE = size
    copying.COPY_CHUNK = size
    from portcullis.cli import main

    sys.argv = ["portcullis", *argv]
    main()


def start_variant(work: servers.Workdir, mode: str, size: int) -> servers.Server:
    label = f"{mode}-{size >> 10}k"
    d = work.sub(label)
    port = servers.free_port()
    (d / "policy.yaml").write_text(yaml.safe_dump(servers.portcullis_policy(port)))
    log = d / "decisions.jsonl"
    log.write_text("")
    cmd = [sys.executable, "-m", "bench.bulk_variants", "--serve", mode, str(size),
           "serve", "-c", str(d / "policy.yaml"), "--log", str(log)]
    proc = servers.popen(cmd, d / "stderr.log")
    deadline = time.monotonic() + 30
    while not any(json.loads(line).get("msg") == "listening"
                  for line in log.read_text().splitlines()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{label} did not start: {(d / 'stderr.log').read_text()}")
        time.sleep(0.05)
    return servers.Server(label, proc, ("127.0.0.1", port))


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--serve":
        serve_variant(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers.raise_nofile()
    with servers.Workdir.create() as work:
        origin = servers.start_nginx(work)
        proxies = []
        try:
            proxies = [start_variant(work, mode, size) for mode, size in VARIANTS]
            runs: dict[str, list[bulk.BulkResult]] = {"direct": []}
            runs.update({p.name: [] for p in proxies})
            for _ in range(args.rounds):
                runs["direct"].append(bulk.download(str(work.ca_pem), None, origin))
                for proxy in proxies:
                    runs[proxy.name].append(bulk.download(str(work.ca_pem), proxy, origin))
        finally:
            for proxy in proxies:
                proxy.stop()
            origin.stop()
    direct = statistics.median(r.mib_s for r in runs["direct"])
    print("| relay | MiB/s | x direct | proxy CPU s/GiB | curl CPU s/GiB | nginx CPU s/GiB |\n"
          "|---|---|---|---|---|---|")
    for name, results in runs.items():
        speed = statistics.median(r.mib_s for r in results)
        proxy_cpu = statistics.median(r.proxy_cpu_s_per_gib or 0.0 for r in results)
        curl = statistics.median(r.client_cpu_s_per_gib for r in results)
        nginx = statistics.median(r.origin_cpu_s_per_gib for r in results)
        print(f"| {name} | {speed:.0f} | {speed / direct:.2f}x | "
              f"{proxy_cpu:.2f} | {curl:.2f} | {nginx:.2f} |")


if __name__ == "__main__":
    main()
