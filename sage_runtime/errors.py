"""The typed failures the command line maps to exit codes (cli.py), and nothing else.

Raised where the problem is found; never matched by message text."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key (exit 2)."""


class PluginLoadError(ConfigError):
    """A plugin that cannot be resolved, is not a plugin, lacks a name or clashes with another (exit 2)."""


class AlreadyRunning(RuntimeError):
    """Another daemon answers on this runtime directory's control socket (exit 3)."""
