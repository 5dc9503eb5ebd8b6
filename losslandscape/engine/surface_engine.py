"""The grid loop shared by plot_surface.py and plot_hessian_eigen.py: resume, MPI, incremental writes.

Rank 0 opens the surface file (validating it, or creating it), finds the points still missing and
broadcasts them -- the only collective of a run. Each rank evaluates its share (scheduler.py); other
ranks send each result to rank 0 as soon as it exists, and rank 0 records it. Recorded results
reach the file about once a second (surface_store: in place, a constant cost per point), before
rank 0 waits idle for results, and at every exit: the end, an exception, Ctrl-C or SIGTERM. A
killed run loses only the points in flight and those recorded since the last flush, and rerunning
the same command computes exactly the missing ones.
"""
import signal
import sys
import time

import numpy as np

from losslandscape._testing import fault_injection
from losslandscape.engine import progress
from losslandscape.io.surface_store import Terminated, sigterm_raises
from losslandscape.parallel.mpi_comm import fail_all_ranks
from losslandscape.parallel.scheduler import assign_chains, assign_points


def run_grid(comm, grid, open_writer, evaluate_points, desc='grid points', points_per_call=1, chains=False,
             on_bar=None):
    """Evaluate ``evaluate_points([(k, names), ...]) -> [{name: float}, ...]`` at every point k of
    ``grid`` that misses a value, handing it up to ``points_per_call`` of this rank's points at a
    time. ``names`` are the values point k misses: the evaluator computes at least those (a file
    that has train_loss and now gets test_loss does not pay for train_loss again).

    ``chains``: each rank takes a contiguous run of the missing points in serpentine order and
    evaluates it in that order (scheduler.assign_chains: consecutive points are neighbours), instead
    of every nranks-th point. ``on_bar(bar)``: called on rank 0 with the progress bar, before the
    first point (an evaluator that shows progress within a point).

    ``open_writer()`` (called on rank 0 only) returns a surface_store.SurfaceWriter. Returns a
    summary dict on rank 0 (None elsewhere). SIGTERM or Ctrl-C on rank 0 ends the run with one line
    on stderr and exit status 143 or 130, once every recorded point is in the file."""
    writer = None

    def open_and_list():
        nonlocal writer
        writer = open_writer()
        return [(int(k), writer.missing(k)) for k in writer.pending()]

    missing = dict(comm.root_only(open_and_list))   # the run's one collective
    pending = list(missing)
    mine = assign_chains(pending, comm.rank, comm.size, grid.shape) if chains \
        else assign_points(pending, comm.rank, comm.size)
    calls = [[(int(k), missing[int(k)]) for k in mine[i:i + points_per_call]]
             for i in range(0, len(mine), points_per_call)]
    started = time.perf_counter()
    try:
        try:
            if comm.is_root:
                with sigterm_raises():
                    _root_loop(comm, grid, writer, evaluate_points, pending, calls, desc, on_bar)
            else:
                for points in calls:
                    for (k, _), values in zip(points, evaluate_points(points)):
                        comm.send_result(k, values)
                        fault_injection.reached('point')
        except Exception:
            if writer is not None:
                writer.close(discard_if_empty=True)   # a new file without a point: nothing to resume
            raise
        finally:
            if writer is not None:
                writer.close()   # before any exit: every recorded point reaches the file
    except (Terminated, KeyboardInterrupt) as stop:
        if writer is None:   # another rank: rank 0 says what is stored
            raise
        # Ctrl-C says what SIGTERM says, and ends with the shell's status for it (130).
        stop = stop if isinstance(stop, Terminated) else Terminated(signal.SIGINT)
        stored = grid.num_points - len(writer.pending())
        print(f'{desc}: stopped by {stop.signal_name}; {stored} of {grid.num_points} points are in '
              f'{writer.path}; rerun the same command to compute the rest', file=sys.stderr, flush=True)
        comm.abort(stop.code)   # under MPI, the other ranks too
        raise stop from None
    except Exception as err:
        fail_all_ranks(comm, err)
    if not comm.is_root:
        return None
    return summarize(writer, len(pending), time.perf_counter() - started)


def _root_loop(comm, grid, writer, evaluate_points, pending, calls, desc, on_bar):
    done_before = grid.num_points - len(pending)
    with progress.progress_bar(grid.num_points, desc, 'pt', initial=done_before) as bar:
        if on_bar is not None:
            on_bar(bar)
        def record(results):
            for k, values in results:
                writer.record(k, values)
            bar.update(len(results))

        remote_expected, received = len(pending) - sum(len(points) for points in calls), 0
        for points in calls:
            own = [(k, values) for (k, _), values in zip(points, evaluate_points(points))]
            arrived = comm.poll_results()
            received += len(arrived)
            record(own + arrived)
            writer.flush_if_due()
        while received < remote_expected:
            writer.flush()   # results wait in memory while rank 0 computes, never while it idles
            arrived = [comm.recv_result()] + comm.poll_results()
            received += len(arrived)
            record(arrived)


def summarize(writer, computed, seconds):
    """What the run did: points computed now, and how many stored values diverged (inf/NaN). By-products
    (standard errors, Hessian-vector product counts) say nothing of divergence: a standard error of too
    few units is NaN at every point."""
    diverged = {}
    for name in writer.required_names:
        values = writer.values[name]
        bad = int(np.count_nonzero(writer.done[name] & ~np.isfinite(values)))
        if bad:
            diverged[name] = bad
    return {'computed': computed, 'seconds': seconds, 'diverged': diverged,
            'complete': len(writer.pending()) == 0}
