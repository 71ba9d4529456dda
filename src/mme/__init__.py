"""mme: linear mixed models by Henderson's mixed-model equations and AI-REML.

    fit = mme.fit("yield ~ K2O_lbac + (1|rep)", data=df)
"""
from ._errors import (ConvergenceWarning, DataError, DroppedRowsWarning, FormulaError,
                      MMEError, NotPositiveDefiniteError, PedigreeError, SingularFitWarning)
from .fit import fit
from .formula import parse_formula
from .genomic import genomic_relationship, single_step_inverse
from .pedigree import Pedigree
from .results import Fit

__version__ = "0.1.0"

__all__ = [
    "fit", "Fit", "parse_formula", "Pedigree", "genomic_relationship", "single_step_inverse",
    "MMEError", "FormulaError", "DataError", "PedigreeError", "NotPositiveDefiniteError",
    "ConvergenceWarning", "SingularFitWarning", "DroppedRowsWarning",
]
