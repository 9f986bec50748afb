"""Finding plugin classes: entry points of the `sage_runtime.plugins` group, or `module:Class`."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from sage_runtime.plugin.contract import IRPPlugin

ENTRY_POINT_GROUP = "sage_runtime.plugins"


def available_plugins() -> dict[str, str]:
    """Registered plugin names and the object each entry point names."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin_class(spec: str) -> type[IRPPlugin]:
    """Resolve a registered name ("vision") or an import path ("pkg.mod:Class")."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not matches:
            known = ", ".join(sorted(available_plugins())) or "none"
            raise LookupError(f"no plugin named {spec!r} (registered: {known})")
        obj = matches[0].load()
    if not (isinstance(obj, type) and issubclass(obj, IRPPlugin)):
        raise TypeError(f"{spec!r} is not an IRPPlugin subclass")
    return obj
