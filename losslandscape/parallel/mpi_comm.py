"""All rank logic: who is root, who speaks, which GPU a rank takes, and how results reach rank 0.

Serial runs use ``SerialComm`` with the same interface, so callers never test for MPI themselves.
There is no collective per grid point: workers send each result to rank 0 as a small point-to-point
message, and rank 0 -- the only writer of the surface file -- collects them between its own points.
The one collective, ``sum``, is for hessian_spectrum.py, whose ranks split each Hessian-vector
product by data shard.
"""
import os
import sys
import traceback

import numpy as np

from losslandscape.errors import UsageError

RESULT_TAG = 11


class SerialComm:
    """The one-process stand-in for MPI."""
    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self):
        return self.rank == 0

    def bcast(self, obj):
        return obj

    def barrier(self):
        pass

    def send_result(self, k, values):
        raise RuntimeError('a serial run has no rank 0 to send to')

    def poll_results(self):
        return []

    def recv_result(self):
        raise RuntimeError('a serial run receives no results')

    def abort(self, code):
        sys.exit(code)

    def root_only(self, fn):
        """Run ``fn`` on rank 0 and return its result on every rank (see MPIComm.root_only)."""
        return fn()

    def sum(self, array):
        """The elementwise sum of ``array`` (float64 numpy) over the ranks, the same bits on every rank."""
        return array

    def node_allgather(self, obj):
        """[``obj`` of each rank on this node], in node-rank order."""
        return [obj]


class MPIComm(SerialComm):
    """COMM_WORLD through mpi4py."""

    def __init__(self, mpi):
        self.MPI, self.comm = mpi, mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # Rank within the node: spreads GPUs evenly on multi-node jobs.
        self.node = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def send_result(self, k, values):
        self.comm.send((int(k), values), dest=0, tag=RESULT_TAG)

    def poll_results(self):
        """Every result that has already arrived at rank 0, without waiting."""
        got = []
        while self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=RESULT_TAG):
            got.append(self.comm.recv(source=self.MPI.ANY_SOURCE, tag=RESULT_TAG))
        return got

    def recv_result(self):
        return self.comm.recv(source=self.MPI.ANY_SOURCE, tag=RESULT_TAG)

    def node_allgather(self, obj):
        return self.node.allgather(obj)

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def sum(self, array):
        # Reduced on rank 0 and broadcast, not Allreduce: an allreduce may add in another order on
        # each rank, and ranks that go on computing from the sum (Lanczos, hessian_spectrum.py)
        # must hold the same bits, or they would drift apart.
        array = np.ascontiguousarray(array, dtype=np.float64)
        total = np.empty_like(array)
        self.comm.Reduce(array, total, op=self.MPI.SUM, root=0)
        self.comm.Bcast(total, root=0)
        return total

    def root_only(self, fn):
        """Run ``fn`` on rank 0 only and broadcast its result. If it fails, every rank fails the
        same way (a UsageError stays a UsageError), so no rank waits forever for a dead root."""
        outcome = None
        if self.is_root:
            try:
                outcome = ('ok', fn())
            except UsageError as err:
                outcome = ('usage', str(err))
            except BaseException as err:  # re-raised below on rank 0 with its traceback
                self.bcast(('crash', f'rank 0 failed: {type(err).__name__}: {err}'))
                raise
        status, payload = self.bcast(outcome)
        if status == 'ok':
            return payload
        if status == 'usage':
            raise UsageError(payload)
        raise SystemExit(1)


# What MPI launchers put in each rank's environment: MPICH/Hydra and Intel MPI, Open MPI, PMIx, Slurm.
LAUNCHER_RANK_VARIABLES = ('PMI_RANK', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'SLURM_PROCID')


def launcher_rank():
    """This process's MPI rank as the launcher's variables give it (0 when not launched under MPI):
    known before MPI is started, so bad arguments can be reported once, and never starts MPI."""
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    for variable in LAUNCHER_RANK_VARIABLES:
        value = os.environ.get(variable, '').strip()
        if value.isdigit():
            return int(value)
    return 0


def is_speaking_rank():
    """Whether this process prints messages: rank 0, or not under MPI."""
    return launcher_rank() == 0


def select_device(use_cuda, local_rank=0):
    """'cpu', or the GPU of a rank: its rank within the node modulo the node's GPU count, so
    multi-node jobs spread evenly (UsageError when CUDA was asked for and there is none)."""
    import torch
    if not use_cuda:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise UsageError('--cuda was given but PyTorch sees no CUDA GPU on this machine')
    return torch.device('cuda', local_rank % torch.cuda.device_count())


def usable_cores():
    """The CPU cores this process may run on: its affinity mask (taskset, a Slurm cpuset, an MPI
    launcher's binding) where the system tells it, else every core."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:   # no affinity masks on this system (macOS)
        return frozenset(range(os.cpu_count() or 1))


def threads_for(requested, comm):
    """(CPU threads for this rank, why): ``requested`` (--threads) when given; else OMP_NUM_THREADS
    when set (a per-process count, as OpenMP takes it); else the cores of this process's affinity
    mask shared among the ranks on this node whose masks overlap it (ranks bound to cores of their
    own keep theirs). os.cpu_count() counts cores the process may not use: on a shared or Slurm
    node, or with several ranks per node, sizing from it oversubscribes the cores, and spinning
    thread pools then slow down many times over. Collective over the node's ranks."""
    mine = usable_cores()
    masks = comm.node_allgather(mine)   # every rank takes part, whichever way it then decides
    if requested:
        return requested, '--threads'
    omp = os.environ.get('OMP_NUM_THREADS', '').split(',')[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), f'OMP_NUM_THREADS={omp}'
    sharing = sum(1 for mask in masks if mask & mine)
    threads = max(1, len(mine) // sharing)
    cores = f'the {len(mine)} core{"s" if len(mine) != 1 else ""} this process may use'
    return threads, cores + (f', shared by {sharing} MPI ranks on this node' if sharing > 1 else '')


def get_comm(use_mpi):
    """SerialComm, or MPIComm when ``use_mpi`` (UsageError if mpi4py or its MPI is missing)."""
    if not use_mpi:
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise UsageError(f'--mpi needs mpi4py and an MPI library ({err}); '
                         "run `pip install 'losslandscape[mpi]'`, then launch with mpiexec -n N") from None
    return MPIComm(MPI)


def fail_all_ranks(comm, err):
    """A crash inside the per-point loop: report it from this rank and stop every rank. Results
    already written stay in the surface file; rerunning the same command resumes. A UsageError
    (a loss function that returned the wrong thing at a later point) is the user's one line."""
    prefix = f'[rank {comm.rank}] ' if comm.size > 1 else ''
    if isinstance(err, UsageError):
        if comm.size > 1:
            sys.stderr.write(f'{prefix}error: {" ".join(str(err).split())}\n')
            comm.abort(2)
        raise err
    sys.stderr.write(prefix + ''.join(traceback.format_exception(err)))
    if comm.size > 1:
        comm.abort(1)
    raise err
