"""Identity groups: which source groups an authenticated identity adds to a client
(docs/semantics.md §11).

A group lists identities and, optionally, the source groups or CIDRs they must
also come from: an identity from elsewhere is not a member. Pure lookups over the
compiled policy; proving an identity is the proxy's job (proxy/identify.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portcullis.config.access import IdentityGroup


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    names: frozenset[str]
    # The address groups (named, or an inline CIDR's anonymous one) it needs; None: any.
    within: frozenset[str] | None


class IdentityIndex:
    def __init__(self, groups: Mapping[str, IdentityGroup]) -> None:
        self._groups = tuple(
            _Compiled(name, frozenset(g.names),
                      frozenset(g.from_) if g.from_ is not None else None)
            for name, g in groups.items()
        )
        self._by_identity: dict[str, tuple[_Compiled, ...]] = {}
        for group in self._groups:
            for identity in group.names:
                self._by_identity[identity] = (*self._by_identity.get(identity, ()), group)

    def __bool__(self) -> bool:
        return bool(self._groups)

    @staticmethod
    def _admits(group: _Compiled, address_groups: frozenset[str]) -> bool:
        return group.within is None or not group.within.isdisjoint(address_groups)

    def groups_of(self, identity: str | None, address_groups: frozenset[str]) -> frozenset[str]:
        """The identity groups `identity` belongs to from a client in `address_groups`."""
        if identity is None:
            return frozenset()
        return frozenset(g.name for g in self._by_identity.get(identity, ())
                         if self._admits(g, address_groups))

    def reachable(self, address_groups: frozenset[str]) -> frozenset[str]:
        """The identity groups some identity could join from a client in `address_groups`:
        what credentials could add to what the address alone gets."""
        return frozenset(g.name for g in self._groups if self._admits(g, address_groups))
