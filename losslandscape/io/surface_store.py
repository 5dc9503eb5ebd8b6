"""The surface store: one run's surface file while it is computed -- what is resumed, and when
results reach the file.

Resume. ``SurfaceWriter`` (MPI rank 0 only) holds the file's lock, validates an existing file
against the run, loads what it holds and tells the grid loop which values are still missing; a
value once stored is never replaced.

Writes. The file is written whole only when it is created, or once at opening when it must change
shape (arrays added, a legacy layout, new run attributes): atomically, with every array allocated
at full size (hdf5_layout.write_surface_file). From then on a flush writes the points recorded since
the last one in place, in this order: their values, an HDF5 flush, their done masks, a flush. A
process killed at any moment (SIGKILL loses no write already handed to the kernel) thus leaves done
False for every value not yet in the file, and the file is always one a rerun can trust. Nothing is
fsync'ed: a power cut may lose more, as it may for any file.

When. The grid loop calls ``flush_if_due`` after recording results: it flushes once
FLUSH_INTERVAL_SECONDS have passed since the last flush. The loop also flushes before rank 0 waits
idle for other ranks' results, and the writer flushes when it closes: at the end of the loop, on an
exception, on SIGINT (KeyboardInterrupt) and on SIGTERM (``sigterm_raises`` turns it into
``Terminated``). The file work
per point is therefore constant, whatever the grid, and a kill -9 loses at most the points recorded
since the last flush: about one interval's, or one evaluation call of rank 0 where that is longer.
"""
import contextlib
import os
import signal
import threading
import time

import numpy as np

from losslandscape._testing import fault_injection
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.io.file_safety import FileLock, remove_stale_temporaries

FLUSH_INTERVAL_SECONDS = 1.0
FLUSH_SECONDS_VARIABLE = 'LANDSCAPE_FLUSH_SECONDS'


def flush_interval():
    """Seconds between flushes: FLUSH_INTERVAL_SECONDS, or what LANDSCAPE_FLUSH_SECONDS says (0:
    after every record, which the kill tests use so that a fault event names an exact number of
    points in the file; a large value: only at the end)."""
    spec = os.environ.get(FLUSH_SECONDS_VARIABLE)
    if spec is None or not spec.strip():
        return FLUSH_INTERVAL_SECONDS
    try:
        seconds = float(spec)
    except ValueError:
        seconds = float('nan')
    if not seconds >= 0:
        raise UsageError(f'{FLUSH_SECONDS_VARIABLE}={spec!r} is not a number of seconds >= 0')
    return seconds


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread by ``sigterm_raises``: not an Exception, so no
    ``except Exception`` swallows it, while every ``finally`` (the writer's close) still runs.
    Its code is the shell's 128 + signal number."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def sigterm_raises():
    """Within the block SIGTERM raises Terminated instead of ending the process on the spot;
    the previous handler is back afterwards. Outside the main thread (where Python runs no signal
    handler) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        # None: a handler installed outside Python; the default is the nearest we can restore.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class SurfaceWriter:
    """The only writer of one surface file (MPI rank 0): holds the lock, keeps the arrays in
    memory, and writes the recorded points into the file in place (see the module docstring).

    Opening validates an existing file against the requested grid, direction file and identity,
    and adds any value arrays it lacks (NaN, not done) -- e.g. test_loss or max_eig later on.
    A value already stored is never replaced: a point is evaluated for its missing values only
    (``missing``), and ``record`` keeps what was there. ``by_products`` (among ``value_names``) are
    recorded when their point is computed but never make a point pending (hvp_count, which files of
    the original code lack, counts the products of eigenvalues computed now). ``clock``: seconds,
    for the flush interval (a test's fake clock)."""

    def __init__(self, path, grid, dir_file, value_names, identity, attrs, by_products=(),
                 clock=time.monotonic):
        self.path, self.grid, self.value_names = path, grid, tuple(value_names)
        self.required_names = tuple(n for n in self.value_names if n not in by_products)
        self.interval, self.clock = flush_interval(), clock
        self.file = None
        self.lock = FileLock(path).acquire()
        try:
            remove_stale_temporaries(path)   # a killed writer's leftovers; we hold the lock now
            self._open(dir_file, identity, attrs)
        except BaseException:
            self._close_file()
            self.lock.release()
            raise

    def _open(self, dir_file, identity, attrs):
        shape = self.grid.shape
        self.values = {n: np.full(shape, np.nan) for n in self.value_names}
        self.done = {n: np.zeros(shape, dtype=bool) for n in self.value_names}
        exists = os.path.exists(self.path)
        if exists:
            old = hdf5_layout.read_surface(self.path)
            hdf5_layout.check_surface_matches(old, self.grid, dir_file, identity)
            for n in self.value_names:
                if n in old.values:
                    self.values[n], self.done[n] = old.values[n].copy(), old.done[n].copy()
        opened = exists and hdf5_layout.open_surface_in_place(self.path, self.value_names, shape, attrs)
        if not opened:
            # Created (it exists, valid and empty, from the first moment on), or rewritten once
            # with the arrays it lacks and this run's attributes; the identity only at creation.
            hdf5_layout.write_surface_file(self.path, dir_file, self.grid.xcoordinates, self.grid.ycoordinates,
                                           self.values, self.done, attrs if exists else {**identity, **attrs})
            opened = hdf5_layout.open_surface_in_place(self.path, self.value_names, shape, attrs)
            if not opened:
                raise RuntimeError(f'{self.path!r} was just written but cannot be updated in place')
        self.file, self.arrays = opened
        self.created = not exists   # by this writer (close(discard_if_empty=True) may remove it)
        self.last_flush = self.clock()
        self.first_unflushed = self.last_unflushed = None   # the flat range the next flush writes
        self.unflushed = 0                                  # points recorded since the last flush

    def pending(self):
        """Flat indices of the points where any (required) value is still missing, in order."""
        missing = np.zeros(self.grid.shape, dtype=bool)
        for n in self.required_names:
            missing |= ~self.done[n]
        return np.flatnonzero(missing.ravel())

    def missing(self, k):
        """The required value names not yet stored at flat point ``k``."""
        index = self.grid.index(k)
        return tuple(n for n in self.required_names if not self.done[n][index])

    def record(self, k, results):
        """Store the values of point ``k`` that are still missing, in memory until the next flush;
        ``results`` must hold every missing required one (it may hold more: those already stored
        are kept)."""
        index, stored = self.grid.index(k), False
        for n in self.value_names:
            if self.done[n][index] or (n not in results and n not in self.required_names):
                continue
            self.values[n][index] = results[n]
            self.done[n][index] = True
            stored = True
        if stored:
            k = int(k)
            self.first_unflushed = k if self.first_unflushed is None else min(self.first_unflushed, k)
            self.last_unflushed = k if self.last_unflushed is None else max(self.last_unflushed, k)
            self.unflushed += 1
            fault_injection.reached('recorded')

    def flush_if_due(self):
        """Flush if points wait and the flush interval has passed since the last flush."""
        if self.unflushed and self.clock() - self.last_flush >= self.interval:
            self.flush()

    def flush(self):
        """Write the points recorded since the last flush into the file, in place: values first,
        done masks after, each followed by an HDF5 flush (see the module docstring)."""
        if self.unflushed:
            # Every point between the first and the last one recorded: those in between that were
            # not recorded hold what the file holds, so rewriting them changes nothing.
            slabs = flat_range_slabs(self.grid.shape, self.first_unflushed, self.last_unflushed)
            for n in self.value_names:
                for slab in slabs:
                    self.arrays[n][0][slab] = self.values[n][slab]
            self.file.flush()
            fault_injection.reached('values', self.unflushed)   # tests kill here: values without masks
            for n in self.value_names:
                for slab in slabs:
                    self.arrays[n][1][slab] = self.done[n][slab]
            self.file.flush()
        written = self.unflushed
        self.first_unflushed = self.last_unflushed = None
        self.unflushed, self.last_flush = 0, self.clock()
        if written:
            fault_injection.reached('point', written)

    def close(self, discard_if_empty=False):
        """Flush, close the file and release the lock (also after a failed flush). Closing again
        does nothing. ``discard_if_empty``: remove the file, while the lock is still held, if
        this writer created it and it holds no point (a run that failed before its first point
        leaves nothing behind)."""
        try:
            if self.file is not None:
                self.flush()
        finally:
            self._close_file()
            if discard_if_empty and self.created and not any(done.any() for done in self.done.values()) \
                    and self.lock.fd is not None:
                os.remove(self.path)
            self.lock.release()

    def _close_file(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def flat_range_slabs(shape, first, last):
    """Index expressions that together select exactly the flat (row-major) points first..last of
    an array of ``shape`` (1D or 2D): at most three rectangles."""
    if len(shape) == 1:
        return [np.s_[first:last + 1]]
    width = shape[1]
    (row0, col0), (row1, col1) = divmod(first, width), divmod(last, width)
    if row0 == row1:
        return [np.s_[row0, col0:col1 + 1]]
    slabs = [np.s_[row0, col0:width]]
    if row1 > row0 + 1:
        slabs.append(np.s_[row0 + 1:row1, :])
    slabs.append(np.s_[row1, 0:col1 + 1])
    return slabs
