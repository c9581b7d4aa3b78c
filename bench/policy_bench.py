"""Policy benchmark: compile 100,000 names and patterns with 10,000 source CIDRs,
then decide 1,000,000 random lookups on one core (issue: policy core, item 7).

Targets: compile < 2 s; >= 200,000 decisions per second.
Run: make bench-policy  (or .venv/bin/python bench/policy_bench.py --lookups N)
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

from portcullis.config import Policy
from portcullis.policy.engine import Engine


def build_document(rng: random.Random, names: int, cidrs: int, rules: int) -> dict[str, object]:
    sources: dict[str, list[str]] = {}
    for i in range(cidrs):
        group = f"g{i % 100}"
        net = ipaddress.ip_network((10 << 24) | (i << 8), strict=False).supernet(new_prefix=24)
        sources.setdefault(group, []).append(str(net))
    per_rule = names // rules
    doc_rules = []
    for r in range(rules):
        to = []
        for j in range(per_rule):
            n = r * per_rule + j
            to.append(f"*.d{n}.example" if n % 4 == 0 else f"h{n}.d{n}.example")
        doc_rules.append(
            {"name": f"r{r}", "from": [f"g{r % 100}", f"g{(r + 1) % 100}"], "to": to,
             "ports": [443], "action": "allow" if r % 10 else "deny"}
        )
    return {"version": 1, "sources": sources, "rules": doc_rules}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--cidrs", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=1_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(7)
    document = build_document(rng, args.names, args.cidrs, args.rules)

    t0 = time.perf_counter()
    policy = Policy.model_validate(document)
    t1 = time.perf_counter()
    engine = Engine(policy)
    t2 = time.perf_counter()

    # Lookups: a mix of exact hits, wildcard hits (deeper names) and misses,
    # from clients spread over all source CIDRs and some unknown ones.
    hosts = []
    for _ in range(4096):
        n = rng.randrange(args.names)
        kind = rng.random()
        if kind < 0.4:
            hosts.append(f"h{n}.d{n}.example")
        elif kind < 0.8:
            hosts.append(f"x{n}.y.d{n - n % 4}.example")
        else:
            hosts.append(f"miss{n}.other.example")
    clients = [
        ipaddress.ip_address((10 << 24) | (rng.randrange(args.cidrs) << 8) | rng.randrange(256))
        if rng.random() < 0.95 else ipaddress.ip_address(f"192.0.2.{rng.randrange(256)}")
        for _ in range(4096)
    ]
    decide = engine.decide
    allowed = 0
    t3 = time.perf_counter()
    for i in range(args.lookups):
        if decide(clients[i & 4095], hosts[(i * 7) & 4095], 443).allowed:
            allowed += 1
    t4 = time.perf_counter()
    rate = args.lookups / (t4 - t3)
    print(f"rules={args.rules} names+patterns={args.names} source_cidrs={args.cidrs}")
    print(f"validate_s={t1 - t0:.2f} compile_s={t2 - t1:.2f} (target compile < 2 s)")
    print(f"lookups={args.lookups} decisions_per_s={rate:,.0f} allowed={allowed}"
          " (target >= 200,000/s)")


if __name__ == "__main__":
    main()
