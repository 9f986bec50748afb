"""Plugins: the contract a plugin implements, the runner that holds it to its budget, the host
thread that isolates it, the registry that finds it.

This module is the one a plugin author imports from (docs/plugins.md):

    from sage_runtime.plugin import Frame, Plugin, PluginInputs, PluginOptions
"""

from sage_runtime.plugin.contract import (
    HALT_REASONS, InputQueue, IRPPlugin, PluginContext, PluginInputs, PluginOptions,
)
from sage_runtime.plugin.registry import ENTRY_POINT_GROUP, load_plugin_class, validate_options
from sage_runtime.records import Frame, RunResult

#: The short name of the base class; `IRPPlugin` (iterative refinement) is the same class.
Plugin = IRPPlugin

__all__ = [
    "ENTRY_POINT_GROUP", "HALT_REASONS", "Frame", "InputQueue", "IRPPlugin", "Plugin", "PluginContext",
    "PluginInputs", "PluginOptions", "RunResult", "load_plugin_class", "validate_options",
]
