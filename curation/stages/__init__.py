"""Curation stages (issue 5)."""
