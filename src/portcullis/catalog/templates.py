"""Catalog names with placeholders (`<account>.dkr.ecr.<region>.amazonaws.com`).

A template is only ever turned into rule patterns here, so the checks that
keep a user's `--param` value from smuggling extra labels or wildcards into a
firewall rule live in one place.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from portcullis.basics.names import Pattern

PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_-]*)>")

# A value replaces exactly one placeholder inside one label: a dot would add
# labels ("evil.com") and a '*' would turn a name into a wildcard.
_VALUE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")

# Stand-in used to check a template's shape when it is loaded.
SAMPLE_VALUE = "x0"


def placeholders(template: str) -> tuple[str, ...]:
    """The placeholder keys of `template`, first occurrence order, no repeats."""
    return tuple(dict.fromkeys(PLACEHOLDER.findall(template)))


def is_template(name: str) -> bool:
    return PLACEHOLDER.search(name) is not None


def split_values(key: str, raw: str) -> list[str]:
    """Values of one parameter: comma-separated, lowercased, each a label part.

    Several values are allowed so that one command can list, say, two ACR
    registries; they expand to one name per value.
    """
    values = [part.strip().lower() for part in raw.split(",")]
    for value in values:
        if not _VALUE.match(value):
            raise ValueError(
                f"--param {key}={raw!r}: {value!r} is not a valid value; use letters, digits "
                f"and inner hyphens only (no dots or '*'), e.g. --param {key}=example-1"
            )
    return list(dict.fromkeys(values))


def fill(template: str, values: Mapping[str, list[str]]) -> list[str]:
    """Every name `template` gives for the cartesian product of `values`.

    The caller checks that each placeholder has a value.
    """
    keys = placeholders(template)
    names: list[str] = []
    for combo in itertools.product(*(values[key] for key in keys)):
        name = template
        for key, value in zip(keys, combo, strict=True):
            name = name.replace(f"<{key}>", value)
        names.append(name)
    return names


def sample(template: str) -> str:
    return PLACEHOLDER.sub(SAMPLE_VALUE, template)


def covers(wildcard: Pattern, name: str) -> bool:
    """Whether the wildcard `*.S` matches every name `name` can stand for.

    `name` is an exact name, a `*.suffix` pattern or a template. A template is
    covered when it ends with the literal `.S`: values never hold dots, so
    whatever fills the placeholders, at least one label still precedes `S`.
    """
    tail = "." + wildcard.suffix
    if name.startswith("*."):
        rest = name[2:]
        return rest == wildcard.suffix or rest.endswith(tail)
    return name.endswith(tail) and len(name) > len(tail)
