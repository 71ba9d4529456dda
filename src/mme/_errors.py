"""Typed errors and warnings of mme. Each message names the column, id or row at fault."""


class MMEError(Exception):
    """Base class of every error raised by mme."""


class FormulaError(MMEError, ValueError):
    """The model formula cannot be parsed or refers to something that is not there."""


class DataError(MMEError, ValueError):
    """The data cannot be used as given (wrong type, empty, a single level, ...)."""


class PedigreeError(DataError):
    """A pedigree fault: duplicated ids, cycles, sex conflicts, unknown animals."""


class DfMethodError(MMEError, ValueError):
    """A degrees-of-freedom method that does not apply to this fit."""


class NotPositiveDefiniteError(MMEError, ArithmeticError):
    """A matrix that must be positive definite is not (the MME, G, a relationship matrix)."""


class OptionError(MMEError, ValueError):
    """An argument that is not one of the accepted values (``method=``, ``adjust=``, ...)."""


class UnknownTermError(MMEError, KeyError):
    """A group, term or level asked for that the fitted model does not have."""


class FactorReleasedError(MMEError, RuntimeError):
    """A quantity needs the Cholesky factor of a fit whose factor was released."""


class InternalError(MMEError, RuntimeError):
    """An internal invariant does not hold: a bug in mme (please report it)."""


class KernelArgumentError(InternalError, ValueError):
    """A compiled kernel (``mme._core``) was called with inconsistent arrays."""


class PatternError(InternalError):
    """A factor's pattern is not a Cholesky pattern (``mme._core``'s selected inverse)."""


class OutOfMemoryError(MMEError, MemoryError):
    """A work buffer could not be allocated."""


class ConvergenceWarning(UserWarning):
    """The REML iterations stopped before meeting the convergence criteria."""


class SingularFitWarning(UserWarning):
    """A variance component is estimated at the boundary (zero), as lme4's isSingular."""


class DroppedRowsWarning(UserWarning):
    """Rows with missing values in the model's columns were dropped."""


class DistributedError(MMEError, RuntimeError):
    """A distributed (MPI) run failed: a rank raised, could not read its slice, timed
    out in a collective operation, or was given different parameters. The message
    names the rank(s) and the reason; every rank raises the same message."""
