"""Policies and probes shared by the export tests (unit and e2e).

RICH has what makes translation hard: a deny before an allow, nested
wildcards, an apex allowed by name next to its wildcard, a group nested inside
another (clients there are in both), a second TLS port with its own rule, and
clients in no group. The SNI and Squid formats express all of it. LISTED is
what allow-list formats (Cilium, Calico, AWS, Azure) can express: denials only
where no allowed wildcard covers them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from portcullis.config import Policy, parse_policy
from portcullis.policy.engine import Engine

RICH = """\
version: 1
sources:
  workers: [127.0.0.0/25]
  builders: [127.0.0.64/26]
  lab: [127.0.1.0/24]
tls_ports: [443, 8443]
rules:
  - name: no-germany
    from: [workers]
    to: [de.icr.io, "*.private.icr.io"]
    action: deny
  - name: registry
    from: [workers, lab]
    to: ["*.icr.io", icr.io]
  - name: builders-extra
    from: [builders]
    to: [de.icr.io, "*.docker.io", quay.io]
    ports: [443, 8443]
  - name: lab-no-docker-apex
    from: [lab]
    to: [docker.io]
    action: deny
  - name: lab-docker
    from: [lab]
    to: ["*.docker.io", docker.io]
default: deny
"""

LISTED = """\
version: 1
sources:
  workers: [10.240.0.0/24, 10.240.1.17/32]
rules:
  - name: not-the-old-registry
    from: [workers]
    to: [registry.bluemix.net]
    action: deny
  - name: ibm
    from: [workers]
    to: [icr.io, "*.icr.io", registry.bluemix.net, registry.ng.bluemix.net]
default: deny
"""

# Client addresses: one per source class of RICH, and one in no group.
CLIENTS = {
    "workers": "127.0.0.5",
    "workers+builders": "127.0.0.70",
    "lab": "127.0.1.5",
    "nobody": "127.0.2.5",
}

PROBE_NAMES = [
    "icr.io", "us.icr.io", "a.us.icr.io", "de.icr.io", "x.de.icr.io",
    "private.icr.io", "a.private.icr.io", "b.a.private.icr.io",
    "docker.io", "registry-1.docker.io", "a.b.docker.io", "quay.io", "www.quay.io",
    "example.com", "icr.io.example.com", "xicr.io",
]


def write(tmp: Path, text: str, name: str = "policy.yaml") -> tuple[Path, Policy]:
    path = tmp / name
    path.write_text(text)
    return path, parse_policy(text, str(path))


def expected(policy: Policy, client: str, name: str, port: int) -> bool:
    """Portcullis's own decision on the name, the reference every export must match."""
    verdict = Engine(policy).decide(ipaddress.ip_address(client), name, port)
    return verdict.allowed
