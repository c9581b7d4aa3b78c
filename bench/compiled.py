"""A copy of the source tree with the connection path compiled by mypyc.

For an A/B against the interpreted tree (bench/findings.md, "compiled with mypyc"):

    .venv/bin/python -m bench.compiled /tmp/compiled
    .venv/bin/python -m bench.instructions --tree main=src --tree mypyc=/tmp/compiled/src
    .venv/bin/python -m bench.ab --light --tree main=src --tree mypyc=/tmp/compiled/src

An experiment, not a build: the extension modules land beside the .py files of
the copy (which they shadow), never in src/. Needs gcc and the Python headers.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The modules a connection runs through (the opcode count per function named
# them), minus those mypyc cannot take (pydantic models, click commands).
HOT = [
    "wire/tls.py", "wire/http1.py", "wire/authority.py",
    "observe/lines.py", "observe/events.py", "observe/log.py", "observe/metrics.py",
    "policy/engine.py", "net/resolver.py",
    "proxy/admission.py", "proxy/attempt.py", "proxy/balanced.py", "proxy/copying.py",
    "proxy/deadlines.py", "proxy/dialer.py", "proxy/direction.py", "proxy/explicit.py",
    "proxy/gate.py", "proxy/identify.py", "proxy/inspecting.py", "proxy/parent.py",
    "proxy/per_loop.py", "proxy/pipes.py", "proxy/reactor.py", "proxy/reading.py",
    "proxy/relay.py", "proxy/server.py", "proxy/splicing.py", "proxy/state.py",
    "proxy/tunnel.py",
]


def build(out: Path) -> Path:
    """Copy src/ to `out`/src and compile HOT there; the copy's src directory."""
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"{out} is inside the checkout: give a directory outside it")
    src = out / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    mypyc = Path(sys.executable).parent / "mypyc"
    done = subprocess.run([str(mypyc), *(f"portcullis/{m}" for m in HOT)], cwd=src,
                          capture_output=True, text=True)
    if done.returncode != 0:
        # mypyc writes its type errors to stdout.
        raise SystemExit(f"mypyc failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a directory for the compiled copy")
    print(build(parser.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
