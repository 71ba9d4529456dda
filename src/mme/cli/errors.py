"""Exit statuses of the command line and the one error type it reports without a traceback.

    0  done
    1  bad input: a file, column, option or model that cannot be used as given
       (one line naming the culprit; ``--debug`` shows the traceback)
    2  the REML iterations did not converge (the results are written all the same,
       and a ``--checkpoint`` lets a longer run continue from the last round)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_NOT_CONVERGED = 2


class InputError(Exception):
    """Bad input found by the command line itself (a file, a key, a column, memory)."""
