"""Which similarity methods this installation knows: built-ins plus vetted plug-ins.

A site adds a method by installing a package that declares an entry point in group
``medfed.similarity_methods`` (``name = "package.module:Class"``); the class is built
with no arguments. Knowing a method is not allowing it: the site policy's allowlist
decides what runs on the site's data. A plug-in that fails to load is reported, never
fatal: the built-ins keep working.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from .embed import ProjectionMethod
from .hist import HistogramMethod
from .method import MethodError, SimilarityMethod, check_method

ENTRY_POINT_GROUP = "medfed.similarity_methods"
log = logging.getLogger("medfed.similar")


@dataclass
class MethodRegistry:
    methods: dict[str, SimilarityMethod] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # plug-ins that did not load

    def add(self, method: SimilarityMethod) -> None:
        check_method(method)
        if method.id in self.methods:
            raise MethodError(f"two similarity methods are called {method.id!r}")
        self.methods[method.id] = method

    def get(self, method_id: str) -> SimilarityMethod:
        method = self.methods.get(method_id)
        if method is None:
            known = ", ".join(sorted(self.methods)) or "none"
            raise MethodError(f"unknown similarity method {method_id[:32]!r} (known here: {known})")
        return method

    def ids(self) -> list[str]:
        return sorted(self.methods)


def builtin_registry() -> MethodRegistry:
    registry = MethodRegistry()
    registry.add(HistogramMethod())
    registry.add(ProjectionMethod())
    return registry


def load_registry(group: str = ENTRY_POINT_GROUP) -> MethodRegistry:
    """Built-ins, then every entry point of ``group`` (a broken one is listed in ``problems``)."""
    registry = builtin_registry()
    for ep in entry_points(group=group):
        try:
            registry.add(ep.load()())
        except Exception as exc:  # a plug-in must not stop the node
            registry.problems.append(f"{ep.name}: {type(exc).__name__}: {str(exc)[:120]}")
            log.warning("similarity method plug-in %s not loaded: %s", ep.name, type(exc).__name__)
    return registry
