"""The `reasoning` IRP plugin: HRM-ACT-v1 refining Sudoku, one ACT segment per IRP step."""

from sage_plugins.reasoning.plugin import ReasoningPlugin

__all__ = ["ReasoningPlugin"]
