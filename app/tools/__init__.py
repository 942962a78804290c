"""Parley's own function tools: the `tool` decorator a deployer writes theirs with (the built-ins are the
template, `app.tools.builtin`), and the registry that loads them from PARLEY_TOOLS and entry points."""

from app.tools.core import Tool, ToolError, tool

__all__ = ["Tool", "ToolError", "tool"]
