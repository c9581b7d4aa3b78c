"""Checks of a rule's `inspect:` section, kept apart from the models (one job each)."""

from __future__ import annotations

from collections.abc import Sequence

from portcullis.basics.errors import InvalidPattern
from portcullis.basics.repositories import parse_repository_pattern


def check_repository_pattern(value: str) -> str:
    try:
        parse_repository_pattern(value)
    except InvalidPattern as exc:
        raise ValueError(str(exc)) from None
    return value


def check_inspectable(action: str, to: Sequence[object]) -> None:
    """An inspecting rule allows, and names hosts a certificate can be minted for."""
    if action != "allow":
        raise ValueError("`inspect:` belongs on an allow rule; a deny rule decrypts nothing")
    for dest in to:
        if not isinstance(dest, str):
            continue  # a catalog reference expands to names
        if "/" in dest:
            raise ValueError(
                f"an inspecting rule names hosts, not addresses: {dest!r}; a certificate is"
                " minted for the name the client asks for"
            )
