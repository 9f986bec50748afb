"""Finding plugin classes (entry points of the `sage_runtime.plugins` group, or `module:Class`),
and checking the set and each plugin's options before anything is built.

Resolving a class imports its module and nothing more: weights load in `setup()`, so
`--check-config` can resolve every plugin without loading one."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from sage_runtime.errors import ConfigError, PluginLoadError
from sage_runtime.plugin.contract import IRPPlugin, PluginOptions

ENTRY_POINT_GROUP = "sage_runtime.plugins"


def available_plugins() -> dict[str, str]:
    """Registered plugin names and the object each entry point names."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import(spec: str) -> Any:
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginLoadError(f"plugins.enabled: cannot import {spec!r}: {exc}") from exc
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if not matches:
        known = ", ".join(sorted(available_plugins())) or "none"
        raise PluginLoadError(f"plugins.enabled: no plugin named {spec!r} (registered: {known})")
    try:
        return matches[0].load()
    except (ImportError, AttributeError) as exc:
        raise PluginLoadError(f"plugins.enabled: entry point {spec!r} ({matches[0].value}) fails: {exc}") from exc


def load_plugin_class(spec: str) -> type[IRPPlugin]:
    """Resolve a registered name ("vision") or an import path ("pkg.mod:Class"); PluginLoadError
    when it does not resolve, is not a plugin class, or has no `name`."""
    obj = _import(spec)
    if not (isinstance(obj, type) and issubclass(obj, IRPPlugin)):
        raise PluginLoadError(f"plugins.enabled: {spec!r} is not an IRPPlugin subclass")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginLoadError(f"plugins.enabled: {spec!r} ({_qualname(obj)}) has no `name` (a non-empty str)")
    return obj


def load_plugin_classes(specs: Sequence[str]) -> list[type[IRPPlugin]]:
    """Every enabled plugin class, refusing two with the same name (naming both classes)."""
    classes: dict[str, type[IRPPlugin]] = {}
    for spec in specs:
        cls = load_plugin_class(spec)
        other = classes.get(cls.name)
        if other is not None:
            raise PluginLoadError(f"plugins.enabled: {_qualname(other)} and {_qualname(cls)} are both named "
                                  f"{cls.name!r}; plugin names must be unique")
        classes[cls.name] = cls
    return list(classes.values())


def validate_options(cls: type[IRPPlugin], raw: Mapping[str, Any] | None) -> PluginOptions:
    """`plugins.options.<name>` checked against the plugin's `Options`; ConfigError naming
    `plugins.options.<name>.<key>` for each unknown key or bad value."""
    try:
        return cls.Options.model_validate(dict(raw or {}))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(["plugins", "options", cls.name, *(str(p) for p in err["loc"])])
            lines.append(f"{key}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise ConfigError("invalid plugin options:\n  " + "\n  ".join(lines)) from None


def check_plugins(enabled: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, PluginOptions]:
    """Resolve every enabled plugin and validate its options, by name; options for a plugin that is
    not enabled are refused too (a misspelt name there would otherwise be ignored)."""
    classes = load_plugin_classes(enabled)
    names = {cls.name for cls in classes}
    stray = sorted(set(options) - names)
    if stray:
        raise ConfigError(f"plugins.options.{stray[0]}: no enabled plugin has this name "
                          f"(enabled: {', '.join(sorted(names)) or 'none'})")
    return {cls.name: validate_options(cls, options.get(cls.name)) for cls in classes}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


DEMO_GROUP = "sage_runtime.demo"


def load_demo() -> Any:
    """The demo module registered under the `sage_runtime.demo` entry-point group (the built-in one
    is `sage_plugins.demo`): it provides `demo_overlay(cfg)` and `DemoSources`. The core never
    imports it by name, so `sage_runtime` depends on no plugin package."""
    found = list(entry_points(group=DEMO_GROUP))
    if not found:
        raise PluginLoadError(f"--demo: no demo is installed (entry-point group {DEMO_GROUP})")
    try:
        return sorted(found, key=lambda ep: ep.name)[0].load()
    except (ImportError, AttributeError) as exc:
        raise PluginLoadError(f"--demo: entry point {found[0].value} fails: {exc}") from exc
