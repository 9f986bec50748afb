"""Experience memory plugin: durable SQLite store + modern-Hopfield recall (see README.md)."""

from sage_plugins.memory.plugin import MemoryPlugin

__all__ = ["MemoryPlugin"]
