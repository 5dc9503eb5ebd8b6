"""Which grid points each MPI rank evaluates, and in which order.

``assign_points`` (plot_surface.py): static, interleaved assignment of the points still missing:
rank r takes pending[r::nranks]. It is decided once, without communication, and neighbouring
points (which cost about the same) land on different ranks, so the ranks finish together. Every
point goes to exactly one rank.

``assign_chains`` (plot_hessian_eigen.py): the points still missing in serpentine order (the rows
of a 2D grid alternately left to right and right to left, so that consecutive points are
neighbours), cut into nranks contiguous runs of sizes differing by at most one: each rank walks a
chain of neighbours, along which every point's eigenvalue solve starts from the point before
(hessian.EigenTracker). Also decided once, without communication.
"""
import numpy as np


def _check_rank(rank, nranks):
    if nranks < 1 or not 0 <= rank < nranks:
        raise ValueError(f'rank {rank} is not one of {nranks} ranks')


def assign_points(pending, rank, nranks):
    """The flat point indices (from ``pending``, in order) that ``rank`` of ``nranks`` evaluates."""
    _check_rank(rank, nranks)
    return np.asarray(pending, dtype=np.int64)[rank::nranks]


def serpentine(points, shape):
    """Flat indices ``points`` of a grid of ``shape`` ((ny, nx) or (nx,)), in serpentine order:
    row by row, the even rows by increasing x, the odd ones by decreasing x."""
    points = np.asarray(points, dtype=np.int64)
    if len(shape) == 1:
        return np.sort(points)
    nx = shape[1]
    rows, columns = np.divmod(points, nx)
    along = np.where(rows % 2 == 0, columns, nx - 1 - columns)
    return points[np.lexsort((along, rows))]


def assign_chains(pending, rank, nranks, shape):
    """The flat point indices (from ``pending``) that ``rank`` of ``nranks`` evaluates, in the
    order it evaluates them: its contiguous share of the serpentine order of ``pending``."""
    _check_rank(rank, nranks)
    ordered = serpentine(pending, shape)
    bounds = np.linspace(0, len(ordered), nranks + 1).round().astype(np.int64)
    return ordered[bounds[rank]:bounds[rank + 1]]


def are_neighbours(a, b, shape):
    """Whether flat points ``a`` and ``b`` of a grid of ``shape`` are next to each other (one step
    along one axis)."""
    if len(shape) == 1:
        return abs(int(a) - int(b)) == 1
    (ia, ja), (ib, jb) = divmod(int(a), shape[1]), divmod(int(b), shape[1])
    return abs(ia - ib) + abs(ja - jb) == 1
