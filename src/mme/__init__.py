"""mme: linear mixed models by Henderson's mixed-model equations and AI-REML.

    fit = mme.fit("yield ~ K2O_lbac + (1|rep)", data=df)
"""
from ._errors import (ConvergenceWarning, DataError, DfMethodError, DroppedRowsWarning, FormulaError,
                      MMEError, NotPositiveDefiniteError, PedigreeError, SingularFitWarning)
from .fit import fit
from .formula import parse_formula
from .lrt import lrt
from .genomic import genomic_relationship, single_step_inverse
from .pedigree import Pedigree
from .results import Fit

__version__ = "0.1.0"

__all__ = [
    "fit", "Fit", "lrt", "parse_formula", "Pedigree", "genomic_relationship", "single_step_inverse",
    "MMEError", "FormulaError", "DataError", "DfMethodError", "PedigreeError", "NotPositiveDefiniteError",
    "ConvergenceWarning", "SingularFitWarning", "DroppedRowsWarning",
]
