"""Helpers and subprocess entry points of the hardening tests (issue 8)."""
