"""MPI: ranks, messages, the GPU per rank, and which rank evaluates which points."""

from losslandscape.parallel.mpi_comm import MPIComm, SerialComm, get_comm, select_device
from losslandscape.parallel.scheduler import are_neighbours, assign_chains, assign_points, serpentine

__all__ = [
    # mpi_comm
    'get_comm', 'SerialComm', 'MPIComm', 'select_device',
    # scheduler
    'assign_points', 'assign_chains', 'serpentine', 'are_neighbours',
]
