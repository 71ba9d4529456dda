"""mme: linear mixed models by Henderson's mixed-model equations and AI-REML.

    fit = mme.fit("yield ~ K2O_lbac + (1|rep)", data=df)
"""
from ._errors import (ConvergenceWarning, DataError, DfMethodError, DroppedRowsWarning, FormulaError,
                      MMEError, NotPositiveDefiniteError, PedigreeError, SingularFitWarning)
from .fitting import fit
from .model.formula import parse_formula
from .inference.lrt import lrt
from .breeding.genomic import genomic_relationship, single_step_inverse
from .breeding.pedigree import Pedigree
from .results import Fit

__version__ = "0.1.0"

__all__ = [
    "fit", "Fit", "lrt", "parse_formula", "Pedigree", "genomic_relationship", "single_step_inverse",
    "MMEError", "FormulaError", "DataError", "DfMethodError", "PedigreeError", "NotPositiveDefiniteError",
    "ConvergenceWarning", "SingularFitWarning", "DroppedRowsWarning",
]
