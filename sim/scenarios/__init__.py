"""Scenarios: one small module each, found by name.

A scenario module in this package defines

* ``SUMMARY: str`` — one line for ``medfed sim --help`` and the report;
* ``async def run(ctx: sim.context.SimContext) -> dict[str, Any]`` — builds what it
  needs through ``ctx`` (``await ctx.grid(...)``: started nodes on the simulated network),
  acts, and returns its figures (JSON-able; floats are rounded by the report).
  Latency samples for CDF plots go to ``ctx.samples[name]`` (milliseconds, name ending
  in ``_ms``), curves to ``ctx.series[name]`` as ``[x, y]`` pairs; ``ctx.progress``
  drives the progress bar.

Adding a module here is all it takes for ``medfed sim --scenario NAME`` to run it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_HELPERS = {"common"}


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if m.name not in _HELPERS and not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    if name not in names():
        raise KeyError(f"no scenario {name!r}; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")
