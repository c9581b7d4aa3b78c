"""Loading a policy file, with errors located by line and field.

A load error names the file, the line and the field, and says what is expected,
because the person reading it is editing YAML at 3 a.m. with pulls failing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from portcullis.basics.errors import PolicyError
from portcullis.config.models import Policy

DEFAULT_POLICY_RESOURCE = "default-policy.yaml"


@dataclass(frozen=True, slots=True)
class _Located:
    line: int
    children: dict[object, _Located]


def _locate(node: yaml.Node) -> _Located:
    children: dict[object, _Located] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            children[key.value] = _locate(value)
            # Errors about a key itself (extra field) point at the key's line.
            children[("key", key.value)] = _Located(key.start_mark.line + 1, {})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            children[index] = _locate(item)
    return _Located(node.start_mark.line + 1, children)


def _line_of(root: _Located | None, loc: Iterable[object]) -> int | None:
    if root is None:
        return None
    node = root
    parts = list(loc)
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and ("key", part) in node.children:
            return node.children[("key", part)].line
        child = node.children.get(part)
        if child is not None:
            node = child
        # Segments that are not in the YAML (union tags such as 'catalog')
        # are skipped: the deepest real node is the best line we have.
    return node.line


def _format_loc(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("name", "catalog") and out.endswith("]"):
            continue  # union tags from Destination, meaningless to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    message = str(error["msg"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field; check its spelling and indentation"
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return message


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document, raising PolicyError with locations."""
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, ["1: expected a mapping with `version: 1` and `rules:`"])
    located = _locate(root_node) if root_node is not None else None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error["loc"]
            line = _line_of(located, loc)
            problems.append(f"{line or '?'}: {_format_loc(loc)}: {_describe(error)}")
        raise PolicyError(source, problems) from None


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file, or the embedded default policy when `path` is None."""
    if path is None:
        text = resources.files("portcullis").joinpath(DEFAULT_POLICY_RESOURCE).read_text()
        return parse_policy(text, "<embedded default policy>")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise PolicyError(str(file), ["the file is not UTF-8 text"]) from None
    return parse_policy(text, str(file))
