"""The import direction of docs/architecture.md, read from the source with `ast`.

Layers from the bottom: basics -> wire, net, catalog -> config -> policy ->
observe -> proxy -> tools -> cli. A module may import its own package and any
lower layer, never a higher one and never a sibling of its own layer (wire,
net and catalog know nothing of each other). Lazy imports inside functions
and TYPE_CHECKING imports count like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "portcullis"
LAYERS: dict[str, int] = {
    "basics": 0, "__init__": 0,
    "wire": 1, "net": 1, "catalog": 1,
    "config": 2,
    "policy": 3,
    "observe": 4,
    "proxy": 5,
    "tools": 6,
    "cli": 7,
}


def _package(module: str) -> str:
    """`portcullis.proxy.relay` -> `proxy`; `portcullis` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").exists()


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "portcullis":  # `from portcullis import catalog`
                found.extend(
                    (node.lineno, f"portcullis.{a.name}" if _is_package(a.name) else "portcullis")
                    for a in node.names
                )
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "portcullis"]


def violations(path: Path, source: str | None = None) -> list[str]:
    here = _package(_module_name(path))
    if here not in LAYERS:
        return [f"{path.name}: package {here!r} has no layer; add it to LAYERS and the doc"]
    out = []
    for line, target in _imports(path, source):
        there = _package(target)
        if there == here:
            continue
        if there not in LAYERS:
            out.append(f"{path.relative_to(SRC)}:{line} imports unknown package {target}")
        elif LAYERS[there] >= LAYERS[here]:
            out.append(
                f"{path.relative_to(SRC)}:{line}: {here} (layer {LAYERS[here]}) imports"
                f" {target} ({there}, layer {LAYERS[there]})"
            )
    return out


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py")}
    assert packages <= set(LAYERS), packages - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    assert violations(path) == []


def test_basics_import_nothing_above_themselves() -> None:
    for path in (SRC / "basics").glob("*.py"):
        assert {_package(t) for _, t in _imports(path)} <= {"basics"}, path


@pytest.mark.parametrize(
    ("module", "source", "needle"),
    [
        ("policy/probe.py", "from portcullis.proxy.gate import Gate\n",
         "policy (layer 3) imports portcullis.proxy.gate"),
        ("wire/probe.py", "def f():\n    from portcullis.net import resolver\n",
         "wire (layer 1) imports portcullis.net"),
        ("proxy/probe.py", "import portcullis.tools.learn\n", "proxy (layer 5) imports"),
        ("basics/probe.py", "from portcullis import config\n", "basics (layer 0) imports"),
    ],
)
def test_the_check_catches_an_upward_import(module: str, source: str, needle: str) -> None:
    # The rule must be able to fail; the probe is parsed, never written into src.
    problems = violations(SRC / module, source)
    assert problems and needle in problems[0]
