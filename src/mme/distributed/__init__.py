"""Distributed BLUP and Monte-Carlo REML over MPI (``pip install 'mme[mpi]'``).

The records are split by rows over the ranks of an MPI job (``mpiexec -n K``);
each PCG iteration multiplies by a rank's rows of W and sums the ranks' parts with
one Allreduce; G⁻¹ is applied on rank 0. Without MPI the same code runs on one
process (the serial communicator).

Models: any number of random terms (``(1|g)``, slopes ``(x|g)``, ``(1|a:b)``) with
or without a relationship matrix; ``cbind(y1, y2) ~ …`` multi-trait with missing
records (wide data: a row's traits stay on one rank); ``weights=``; residuals
``by(col)``, ``diag(trait)``, ``us(trait)``. Refused with an OptionError naming the
option: ``ar1(col):ar1(row)`` residuals (not block-diagonal over records), and, for
Monte-Carlo REML, anything but one response with R = σ²ₑI and scalar terms.

Modules, one concept each:

* ``comm``            collectives with a deadline, agreement on errors, serial stand-in
* ``partition``       which rank holds which rows; reading a rank's slice of a file
* ``design``          a rank's rows of W over the whole model's columns
* ``residual``        a rank's block of R⁻¹ (weights, by()/diag(), us(trait))
* ``operator``        C·V = Σ_r W_r'R_r⁻¹W_r V + G⁻¹V in one Allreduce
* ``preconditioner``  block-diagonal M (dense fixed block, d × d per level: slopes
                      or traits)
* ``pcg``             PCG with several right-hand sides, one Allreduce per iteration
* ``blup``            BLUE/BLUP at known variances
* ``mcreml``          Monte-Carlo REML (simulated samples as extra right-hand sides)
"""
from .._errors import DistributedError
from .blup import DistributedResult, blup_distributed, solve_distributed
from .comm import Communicator, SerialComm, world
from .design import LocalDesign, build_local_design
from .mcreml import MCREMLResult, MCREMLState, mc_reml, mc_reml_design
from .partition import RowPartition, read_slice

__all__ = ["blup_distributed", "solve_distributed", "DistributedResult", "Communicator",
           "SerialComm", "world", "LocalDesign", "build_local_design", "RowPartition",
           "read_slice", "DistributedError", "mc_reml", "mc_reml_design", "MCREMLResult",
           "MCREMLState"]
