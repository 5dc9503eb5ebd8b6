"""Deterministic faults for the reliability tests: a process that kills itself at a chosen moment.

A kill at a random time may land after the run has finished, and then proves nothing. The tests
name the moment instead, through the environment (unset in normal use, when every call here is a
cheap no-op):

    LANDSCAPE_KILL_AT=EVENT:N    SIGKILL this process when EVENT happens for the N-th time
    LANDSCAPE_STALL_AT=EVENT:N   sleep forever at that moment instead, so that a kill at a random
                                 time is sure to interrupt an unfinished run; a line on stderr
                                 ('fault_injection: stalled at EVENT:N') says it has begun
    LANDSCAPE_FAULT_RANK=R       only in MPI rank R (default: every process)

Events, each counted in grid points except 'file':
    'recorded'  rank 0 recorded a point's result in memory (surface_store.SurfaceWriter.record);
                it reaches the file at the next flush
    'values'    a flush wrote its points' values, not yet their done masks
    'point'     a flush wrote its points' done masks: those points are in the surface file
                (rank 0); a point's result was sent to rank 0 (the other ranks)
    'file'      a file was renamed into place by file_safety.atomic_path (counted in files)
"""
import os
import signal
import sys
import time

KILL_VARIABLE, STALL_VARIABLE, RANK_VARIABLE = 'LANDSCAPE_KILL_AT', 'LANDSCAPE_STALL_AT', 'LANDSCAPE_FAULT_RANK'
EVENTS = ('recorded', 'values', 'point', 'file')

_counts = dict.fromkeys(EVENTS, 0)


def _target(variable):
    """(event, n) from ``variable``, or None when unset (a malformed value is a test bug: raise)."""
    spec = os.environ.get(variable)
    if not spec:
        return None
    event, _, count = spec.partition(':')
    if event not in EVENTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f'{variable}={spec!r}: expected EVENT:N with EVENT in {EVENTS} and N >= 1')
    return event, int(count)


def _this_rank_is_targeted():
    wanted = os.environ.get(RANK_VARIABLE)
    if wanted is None:
        return True
    from losslandscape.parallel.mpi_comm import launcher_rank
    return launcher_rank() == int(wanted)


def reached(event, times=1):
    """Note that ``event`` happened ``times`` more times; kill or stall here if a test asked to."""
    _counts[event] += times
    for variable in (KILL_VARIABLE, STALL_VARIABLE):
        target = _target(variable)
        if target is None or target[0] != event or _counts[event] < target[1] or not _this_rank_is_targeted():
            continue
        if variable == KILL_VARIABLE:
            os.kill(os.getpid(), signal.SIGKILL)
        print(f'fault_injection: stalled at {event}:{target[1]}', file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
