"""What every atheris harness does around its `one_input`: write its seeds into
the corpus directory libFuzzer was given, then hand over to libFuzzer."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def fuzz_main(seeds: Mapping[str, bytes], one_input: Callable[[bytes], None]) -> None:
    import atheris  # only the harnesses run this, with atheris installed by `make fuzz`

    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        directory = Path(corpus[0])
        directory.mkdir(parents=True, exist_ok=True)
        for name, seed in seeds.items():
            (directory / name).write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
