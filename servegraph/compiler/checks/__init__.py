"""Whole-graph checks: each a function ``(ir, context) -> list[Diagnostic]``, run in the order of ``CHECKS``."""

from .rules import CHECKS, CheckContext, run_checks

__all__ = ["CHECKS", "CheckContext", "run_checks"]
