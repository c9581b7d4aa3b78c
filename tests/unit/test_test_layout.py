"""The layout of the suite itself (tests/README.md), read with `ast`:

- no file imports a test module (`test_*.py`): what two tests share lives in
  tests/support;
- nothing under bench/ imports from tests: the benchmarks stand on their own;
- every end-to-end module is marked `privileged`: tests/e2e/conftest.py adds
  blackhole routes for the whole session, so none of them runs without root.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for each module or name a file imports; relative
    imports are resolved against the file's package, `from a import b` gives
    both `a` and `a.b`."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def found_imports(path: Path, wanted: Callable[[str], bool],
                  source: str | None = None) -> list[str]:
    """Where `path` imports a name that is `wanted`, one line per import statement."""
    hits: dict[int, str] = {}
    for line, name in imports(path, source):
        if wanted(name):
            hits.setdefault(line, f"{path.relative_to(ROOT)}:{line} imports {name}")
    return list(hits.values())


def names_a_test_module(name: str) -> bool:
    return any(part.startswith("test_") for part in name.split("."))


def is_from_tests(name: str) -> bool:
    return name == "tests" or name.startswith("tests.")


def is_privileged_module(source: str) -> bool:
    """Whether a module-level `pytestmark` names `pytest.mark.privileged`."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return any(isinstance(n, ast.Attribute) and n.attr == "privileged"
                       and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
                       for n in ast.walk(node.value))
    return False


TEST_FILES = sorted((ROOT / "tests").rglob("*.py"))
BENCH_FILES = sorted((ROOT / "bench").rglob("*.py"))
E2E_MODULES = sorted((ROOT / "tests" / "e2e").glob("test_*.py"))


def test_the_files_are_found() -> None:
    assert len(TEST_FILES) > 50 and len(BENCH_FILES) > 5 and len(E2E_MODULES) > 5
    assert not list((ROOT / "tests" / "support").rglob("test_*.py")), "support holds no tests"


def test_no_file_imports_a_test_module() -> None:
    found = [hit for path in TEST_FILES + BENCH_FILES
             for hit in found_imports(path, names_a_test_module)]
    assert found == [], "move what is shared into tests/support:\n" + "\n".join(found)


def test_bench_does_not_import_from_tests() -> None:
    found = [hit for path in BENCH_FILES for hit in found_imports(path, is_from_tests)]
    assert found == [], "bench/ must stand on its own:\n" + "\n".join(found)


def test_every_e2e_module_is_marked_privileged() -> None:
    unmarked = [p.name for p in E2E_MODULES if not is_privileged_module(p.read_text())]
    assert unmarked == [], f"add pytest.mark.privileged to their pytestmark: {unmarked}"


# The checks above can fail: each catches what it is for.


@pytest.mark.parametrize("source", [
    "from tests.e2e.test_plain_http import EchoServer\n",
    "import tests.unit.test_http1\n",
    "from tests.e2e import test_faults\n",
    "from . import test_explicit\n",
    "from .test_learn import pull\n",
    "def f():\n    from tests.fuzz.test_fuzz_tls import SEEDS\n",
])
def test_an_import_of_a_test_module_is_found(source: str) -> None:
    path = ROOT / "tests" / "e2e" / "helper.py"
    [hit] = found_imports(path, names_a_test_module, source)
    assert hit.startswith("tests/e2e/helper.py:") and ".test_" in hit


@pytest.mark.parametrize("source", [
    "from tests.support.http import read_head\n",
    "from tests.support import testbed\n",
    "import tests.support.servers\n",
    "from .servers import launch_portcullis\n",
])
def test_imports_of_helpers_are_not_test_modules(source: str) -> None:
    assert found_imports(ROOT / "tests" / "e2e" / "x.py", names_a_test_module, source) == []


def test_a_bench_import_from_tests_is_found() -> None:
    path = ROOT / "bench" / "soak.py"
    assert found_imports(path, is_from_tests, "from bench.procfs import tree\n") == []
    source = "import json\nfrom tests.support.portcullis_proc import run_portcullis\n"
    assert found_imports(path, is_from_tests, source) == [
        "bench/soak.py:2 imports tests.support.portcullis_proc"]
    assert found_imports(path, is_from_tests, "import tests\n") == [
        "bench/soak.py:1 imports tests"]


@pytest.mark.parametrize(("source", "marked"), [
    ("import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.privileged]\n", True),
    ("import pytest\npytestmark = pytest.mark.privileged\n", True),
    ("import pytest\npytestmark = pytest.mark.e2e\n", False),
    ("import pytest\n@pytest.mark.privileged\ndef test_x(): pass\n", False),
])
def test_the_privileged_mark_is_read_from_pytestmark(source: str, marked: bool) -> None:
    assert is_privileged_module(source) is marked
