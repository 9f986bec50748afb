"""Experience memory plugin: durable SQLite store + modern-Hopfield recall (see README.md)."""

from plugins.memory.plugin import MemoryPlugin

__all__ = ["MemoryPlugin"]
