"""A policy mounted from a ConfigMap is reloaded when the ConfigMap changes.

The kubelet never rewrites the mounted file: it writes the new files into a
fresh `..<timestamp>` directory, then renames a new `..data` symlink over the
old one and removes the old directory. `policy.yaml` is a symlink to
`..data/policy.yaml`, so it resolves to a new file with a new mtime, which the
server's 2-second mtime poll must notice (deploy/k8s/configmap.yaml relies on it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.portcullis_proc import policy_for, run_portcullis

pytestmark = [pytest.mark.e2e, pytest.mark.privileged]


def kubelet_write(volume: Path, policy: dict[str, Any], generation: int) -> None:
    """What the kubelet's atomic writer does for a ConfigMap volume."""
    fresh = volume / f"..2030_01_01_00_00_{generation:02d}.000000000"
    fresh.mkdir()
    (fresh / "policy.yaml").write_text(yaml.safe_dump(policy))
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(fresh.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    if not (volume / "policy.yaml").is_symlink():
        os.symlink("..data/policy.yaml", volume / "policy.yaml")
    if old is not None:
        shutil.rmtree(volume / old)


def test_configmap_symlink_swap_reloads_the_policy_without_a_signal(tmp_path: Path) -> None:
    hosts = {"us.icr.io": ["192.0.2.10"]}
    first = policy_for(hosts, [])
    second = policy_for(hosts, [])
    second["rules"] = [{"name": "no-us", "from": ["workers"], "to": ["us.icr.io"],
                        "action": "deny"}]
    volume = tmp_path / "p"
    volume.mkdir()
    kubelet_write(volume, first, 1)
    # run_portcullis writes the policy through the symlink, as a first sync would.
    with run_portcullis(volume, first) as proxy:
        assert (volume / "policy.yaml").is_symlink()
        answer = proxy.ask("us.icr.io:443", to_close=True)
        assert answer.status == 403 and b"reason: no_rule" in answer.rest
        kubelet_write(volume, second, 2)
        record = proxy.wait_for_log(lambda r: r.get("msg") == "policy reloaded", timeout=10)
        assert record["rules"] == 1
        answer = proxy.ask("us.icr.io:443", to_close=True)
        assert answer.status == 403 and b"reason: rule_deny" in answer.rest
        # A broken update is refused and the previous policy keeps deciding.
        kubelet_write(volume, {"version": 1, "rules": [{"name": "x"}]}, 3)
        proxy.wait_for_log(lambda r: str(r.get("msg", "")).startswith("reload rejected"),
                           timeout=10)
        assert b"reason: rule_deny" in proxy.ask("us.icr.io:443", to_close=True).rest
