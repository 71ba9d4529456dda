"""The Materials-and-Methods paragraph written to ``methods.md``: the builder is
:mod:`mme.methods` (also ``Fit.methods_text()``); the run adds what only it knows
(rows read, the pedigree's founders and generations, the weights column, rounds
taken before a resumed checkpoint) through ``info``."""
from ..methods import REFS, generations, methods_text, pedigree_facts, software_versions

__all__ = ["methods_text", "pedigree_facts", "generations", "software_versions", "REFS"]
