"""sage-runtime: an on-device cognition daemon. Importing this package has no side effects."""

__version__ = "0.1.0"
