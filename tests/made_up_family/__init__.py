"""A made-up model family that lives only in this folder (tests/test_architecture.py registers it):
one text encoder, its own key table, and an extra conditioning input (a reference image)."""

from tests.made_up_family.spec import MadeUpSpec

__all__ = ["MadeUpSpec"]
