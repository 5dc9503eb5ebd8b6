"""Which grid points each MPI rank evaluates.

Static, interleaved assignment of the points still missing: rank r takes pending[r::nranks]. It is
decided once, without communication, and neighbouring points (which cost about the same) land on
different ranks, so the ranks finish together. Every point goes to exactly one rank.
"""
import numpy as np


def assign_points(pending, rank, nranks):
    """The flat point indices (from ``pending``, in order) that ``rank`` of ``nranks`` evaluates."""
    if nranks < 1 or not 0 <= rank < nranks:
        raise ValueError(f'rank {rank} is not one of {nranks} ranks')
    return np.asarray(pending, dtype=np.int64)[rank::nranks]
