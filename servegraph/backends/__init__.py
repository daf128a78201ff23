"""Engines other than servegraph's own runtime that run a compiled graph (today: Ray Serve)."""
