"""The policy file (docs/semantics.md §5): its models, and loading it with located errors."""

from portcullis.config.loading import DEFAULT_POLICY_RESOURCE, load_policy, parse_policy
from portcullis.config.models import (
    CatalogRef,
    Destination,
    IncludeTag,
    Limits,
    Listen,
    Log,
    Policy,
    Resolver,
    Rule,
    Transparent,
)

__all__ = [
    "DEFAULT_POLICY_RESOURCE",
    "CatalogRef",
    "Destination",
    "IncludeTag",
    "Limits",
    "Listen",
    "Log",
    "Policy",
    "Resolver",
    "Rule",
    "Transparent",
    "load_policy",
    "parse_policy",
]
