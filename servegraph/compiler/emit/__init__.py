"""Artifacts made from a compiled graph: deploy config, RayService, JSON IR, diagrams (DOT, Mermaid, rendered)."""
