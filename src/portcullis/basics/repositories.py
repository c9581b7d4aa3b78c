"""OCI repository patterns: which repositories (and tags) an inspecting rule allows.

The one definition of the pattern language (docs/semantics.md, "Inspection"):

- a repository is the `<name>` of `/v2/<name>/...`: lowercase path components
  separated by `/`, each `[a-z0-9]+` joined by `.`, `_`, `__` or `-`s;
- `platform/app` matches exactly that repository;
- `*` as a whole component matches exactly one component (`platform/*`);
- `**` as a whole component matches one or more components (`platform/**`
  matches `platform/a` and `platform/a/b`, never `platform` itself, as
  `*.example.com` never matches its apex);
- `:TAG` limits manifests fetched by tag; in a tag `*` matches any run of
  tag characters. A digest reference (`@sha256:...`) is allowed whenever the
  repository is: a digest names content the tag led to, not a new image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from portcullis.basics.errors import InvalidPattern

# The distribution spec's path component and tag grammars.
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_TAG_PATTERN = re.compile(r"[A-Za-z0-9_.*-]{1,128}\Z")
MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class RepositoryPattern:
    text: str
    _repository: re.Pattern[str]
    _tag: re.Pattern[str] | None

    def matches_repository(self, name: str) -> bool:
        return self._repository.fullmatch(name) is not None

    def matches_tag(self, tag: str) -> bool:
        return self._tag is None or self._tag.fullmatch(tag) is not None


def _component_regex(component: str, text: str) -> str:
    if component == "*":
        return "[^/]+"
    if component == "**":
        return "[^/]+(?:/[^/]+)*"
    if "*" in component:
        raise InvalidPattern(
            f"repository pattern {text!r}: `*` stands for a whole path component"
            " (`platform/*`) and `**` for one or more (`platform/**`); name the repository"
            " or use one of those"
        )
    if not COMPONENT.match(component):
        raise InvalidPattern(
            f"repository pattern {text!r}: {component!r} is not a repository path component"
            " (lowercase letters and digits, joined by `.`, `_`, `__` or `-`)"
        )
    return re.escape(component)


def parse_repository_pattern(text: str) -> RepositoryPattern:
    """Compile one pattern; InvalidPattern says what is wrong and what to write."""
    if not text:
        raise InvalidPattern("an empty repository pattern; write a name such as `platform/**`")
    if "@" in text:
        raise InvalidPattern(
            f"repository pattern {text!r}: digests are allowed whenever the repository is;"
            " drop the `@...`"
        )
    repository, colon, tag = text.partition(":")
    if colon and not _TAG_PATTERN.match(tag):
        raise InvalidPattern(
            f"repository pattern {text!r}: the tag pattern {tag!r} may hold letters, digits,"
            " `_`, `.`, `-` and `*` (1 to 128 of them)"
        )
    if len(repository) > MAX_NAME:
        raise InvalidPattern(f"repository pattern {text!r} is longer than {MAX_NAME} characters")
    components = repository.split("/")
    if any(not c for c in components):
        raise InvalidPattern(
            f"repository pattern {text!r}: an empty path component (a leading, trailing or"
            " doubled `/`)"
        )
    # `platform/**` is `platform` then one-or-more components; joining the
    # component regexes with `/` gives exactly that.
    regex = "/".join(_component_regex(c, text) for c in components)
    tag_regex = ".*".join(re.escape(part) for part in tag.split("*")) if colon else None
    return RepositoryPattern(
        text, re.compile(regex), re.compile(tag_regex) if tag_regex is not None else None
    )


def is_repository_name(name: str) -> bool:
    """Whether `name` is a repository name the distribution spec allows."""
    return 0 < len(name) <= MAX_NAME and all(COMPONENT.match(c) for c in name.split("/"))

