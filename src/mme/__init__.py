"""mme: linear mixed models by Henderson's mixed-model equations and AI-REML.

    fit = mme.fit("yield ~ K2O_lbac + (1|rep)", data=df)

``mme.fit`` chains four stages that can be called alone (``mme.fitting``):
``build_design → build_mme → estimate → assemble``.
"""
from ._errors import (ConvergenceWarning, DataError, DfMethodError, DroppedRowsWarning,
                      FactorReleasedError, FormulaError, InternalError, MMEError,
                      NotPositiveDefiniteError, OptionError, PedigreeError, SingularFitWarning,
                      UnknownTermError)
from .fitting import assemble, build_design, build_mme, estimate, fit
from .model.formula import parse_formula
from .inference.lrt import lrt
from .breeding.genomic import genomic_relationship, single_step_inverse
from .breeding.pedigree import Pedigree
from .results import Fit

__version__ = "0.1.0"

__all__ = [
    "fit", "build_design", "build_mme", "estimate", "assemble", "Fit", "lrt", "parse_formula", "Pedigree", "genomic_relationship", "single_step_inverse",
    "MMEError", "FormulaError", "DataError", "DfMethodError", "PedigreeError", "NotPositiveDefiniteError",
    "OptionError", "UnknownTermError", "FactorReleasedError", "InternalError",
    "ConvergenceWarning", "SingularFitWarning", "DroppedRowsWarning",
]
