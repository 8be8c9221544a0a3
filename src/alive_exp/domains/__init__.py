"""Domain registry: `get("math")` returns a ready domain; a new domain is a module plus `register`."""

from __future__ import annotations

import importlib
from typing import Any

from alive_exp.domains.base import MASK, Critique, Document, Domain, SpanCheck, Task

_REGISTRY: dict[str, str | type[Domain]] = {
    "math": "alive_exp.domains.math:MathDomain",
    "code": "alive_exp.domains.code:CodeDomain",
    "logic": "alive_exp.domains.logic:LogicDomain",
}
_CACHE: dict[tuple[str, tuple], Domain] = {}


def register(name: str, cls: type[Domain]) -> None:
    """Add a domain class under `name` (use in a plugin module)."""
    _REGISTRY[name] = cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> Domain:
    """The domain called `name`, built once per option set."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown domain {name!r}; known domains: {', '.join(names())}")
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _CACHE:
        target = _REGISTRY[name]
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
        _CACHE[key] = target(**options)
    return _CACHE[key]


__all__ = ["MASK", "Critique", "Document", "Domain", "SpanCheck", "Task", "get", "names", "register"]
