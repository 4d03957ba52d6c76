"""A made-up model family that lives only in this folder: one text encoder with its own field names,
its own key table, and an extra conditioning input (a reference image). Importing the folder registers
it: the line below is the only registry line the family needs."""

from hv_tune.models import register
from tests.made_up_family.spec import MadeUpSpec

SPEC = register(MadeUpSpec())

__all__ = ["MadeUpSpec", "SPEC"]
