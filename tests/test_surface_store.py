"""surface_store.SurfaceWriter: when recorded points reach the file, that they are written in place
(the file neither copied nor growing), what a rewrite at opening keeps, and SIGTERM."""
import os
import signal
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslandscape.engine.grid import Grid, parse_axis
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout, surface_store
from tests.conftest import ROOT

NAMES = ('train_loss', 'train_acc', 'test_loss', 'test_acc')
ATTRS = {hdf5_layout.ARGS_ATTR: {'x': '-1:1:201'}, hdf5_layout.VERSIONS_ATTR: {'h5py': h5py.__version__}}
IDENTITY = {'model': 'mlp', 'dataset': 'digits'}


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def grid_2d(nx, ny):
    return Grid(parse_axis(f'-1:1:{nx}'), parse_axis(f'-1:1:{ny}'))


def open_writer(path, grid, names=NAMES, attrs=ATTRS, **kwargs):
    return surface_store.SurfaceWriter(str(path), grid, 'directions.h5', names, IDENTITY, attrs, **kwargs)


def value_of(k, name):
    """A synthetic result, different for every point and name."""
    return k + zlib.crc32(name.encode()) % 1000 / 1000


def record(writer, points, names=NAMES):
    for k in points:
        writer.record(k, {n: value_of(k, n) for n in names})


def stored_points(path, name='train_loss'):
    return np.flatnonzero(hdf5_layout.read_surface(str(path)).done[name].ravel()).tolist()


def size_limit(grid, names):
    """Twice the bytes the surface's arrays hold (float64 values, bool masks, coordinates), plus a
    fixed 16 KiB for HDF5's bookkeeping and the attributes."""
    array_bytes = len(names) * grid.num_points * (8 + 1) + 8 * (grid.x.num + grid.y.num)
    return 2 * array_bytes + 16 * 1024


@pytest.fixture(autouse=True)
def default_interval(monkeypatch):
    monkeypatch.delenv(surface_store.FLUSH_SECONDS_VARIABLE, raising=False)


def test_recorded_points_reach_the_file_once_the_interval_has_passed(tmp_path):
    path, clock = tmp_path / 's.h5', FakeClock()
    writer = open_writer(path, grid_2d(5, 4), clock=clock)
    assert stored_points(path) == []                       # created, empty, from the first moment
    record(writer, [0, 1])
    clock.now += surface_store.FLUSH_INTERVAL_SECONDS * 0.99
    record(writer, [2])
    writer.flush_if_due()
    assert stored_points(path) == []
    clock.now += surface_store.FLUSH_INTERVAL_SECONDS * 0.02
    writer.flush_if_due()
    assert stored_points(path) == [0, 1, 2]
    record(writer, [7, 13])                                # the interval counts from the last flush
    writer.flush_if_due()
    assert stored_points(path) == [0, 1, 2]
    writer.close()                                         # and close flushes what waits
    surface = hdf5_layout.read_surface(str(path))
    assert stored_points(path) == [0, 1, 2, 7, 13]
    for name in NAMES:
        assert surface.values[name].ravel()[13] == value_of(13, name)
        assert np.isnan(surface.values[name].ravel()[[3, 4, 5, 6, 8]]).all()


def test_the_interval_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(surface_store.FLUSH_SECONDS_VARIABLE, '0')
    path = tmp_path / 's.h5'
    writer = open_writer(path, grid_2d(3, 3), clock=FakeClock())
    record(writer, [4])
    writer.flush_if_due()
    assert stored_points(path) == [4]
    writer.close()


@pytest.mark.parametrize('spec', ['soon', '-1', 'nan'])
def test_a_bad_interval_is_refused_before_any_file_is_made(tmp_path, monkeypatch, spec):
    monkeypatch.setenv(surface_store.FLUSH_SECONDS_VARIABLE, spec)
    with pytest.raises(UsageError, match=surface_store.FLUSH_SECONDS_VARIABLE):
        open_writer(tmp_path / 's.h5', grid_2d(3, 3))
    assert os.listdir(tmp_path) == []


def test_many_flushes_and_resumes_write_in_place_and_the_file_stays_near_its_arrays(tmp_path, monkeypatch):
    """Each flush changes only the points' bytes: no copy of the file, no growth. Before, every
    flush rewrote the attributes and the file grew by about 4 KB each time."""
    monkeypatch.setenv(surface_store.FLUSH_SECONDS_VARIABLE, '0')
    path, grid = tmp_path / 's.h5', grid_2d(201, 201)

    def run(writer, points, per_flush):
        for start in range(0, len(points), per_flush):
            record(writer, points[start:start + per_flush], writer.value_names)
            writer.flush_if_due()
        writer.close()

    first_half = list(range(grid.num_points // 2))
    run(open_writer(path, grid, NAMES[:2]), first_half, per_flush=20)   # 1,011 flushes
    assert os.path.getsize(path) <= size_limit(grid, NAMES[:2])
    inode = os.stat(path).st_ino
    writer = open_writer(path, grid, NAMES[:2])                        # resumed as it is: in place
    run(writer, writer.pending()[:5000].tolist(), per_flush=5)         # 1,000 more
    assert os.stat(path).st_ino == inode and os.path.getsize(path) <= size_limit(grid, NAMES[:2])
    # New attributes and two more arrays: rewritten once at opening, then in place again.
    writer = open_writer(path, grid, NAMES, attrs={**ATTRS, hdf5_layout.ARGS_ATTR: {'eval_test': True}})
    assert os.stat(path).st_ino != inode
    run(writer, writer.pending().tolist(), per_flush=40)
    surface = hdf5_layout.read_surface(str(path))
    assert os.path.getsize(path) <= size_limit(grid, NAMES)
    for name in NAMES:
        assert surface.done[name].all()
        np.testing.assert_array_equal(surface.values[name].ravel(), [value_of(k, name) for k in range(grid.num_points)])
    assert surface.args() == {'eval_test': True} and surface.attrs['model'] == '"mlp"'


def test_rewrite_at_opening_keeps_what_others_stored(tmp_path):
    path, grid = tmp_path / 's.h5', grid_2d(4, 3)
    writer = open_writer(path, grid, ('max_eig',))
    record(writer, [0, 5], ('max_eig',))
    writer.close()
    with h5py.File(path, 'r+') as f:
        f['notes'] = 'kept'
        f.attrs['owner'] = 'someone else'
    writer = open_writer(path, grid, ('train_loss',))                  # an array added: rewritten
    record(writer, [3], ('train_loss',))
    writer.close()
    surface = hdf5_layout.read_surface(str(path))
    assert np.flatnonzero(surface.done['max_eig'].ravel()).tolist() == [0, 5]
    assert surface.values['max_eig'].ravel()[5] == value_of(5, 'max_eig')
    assert np.flatnonzero(surface.done['train_loss'].ravel()).tolist() == [3]
    assert surface.attrs['owner'] == 'someone else' and surface.attrs['model'] == '"mlp"'
    with h5py.File(path, 'r') as f:
        assert f['notes'][()] == b'kept'


def test_a_file_killed_while_open_for_writing_opens_again_and_in_place(tmp_path):
    """The writer keeps the file open between flushes; SIGKILLed then, HDF5 must still open it
    normally (no "already open for write" flag) and the layout must still be the in-place one."""
    path = tmp_path / 's.h5'
    script = f'''
import os, signal
from tests.test_surface_store import grid_2d, open_writer, record
writer = open_writer({str(path)!r}, grid_2d(6, 5))
record(writer, range(7))
writer.flush()
record(writer, range(7, 12))     # in memory only
os.kill(os.getpid(), signal.SIGKILL)
'''
    run = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    inode = os.stat(path).st_ino
    assert stored_points(path) == list(range(7))
    writer = open_writer(path, grid_2d(6, 5))
    assert os.stat(path).st_ino == inode and writer.pending().tolist() == list(range(7, 30))
    writer.close()


def test_sigterm_raises_terminated_inside_the_block_only(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(surface_store.Terminated) as stop:
        with surface_store.sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)   # the handler runs at once, interrupting the sleep
    assert stop.value.code == 128 + signal.SIGTERM and stop.value.signal_name == 'SIGTERM'
    assert signal.getsignal(signal.SIGTERM) is previous


@settings(max_examples=300, deadline=None)
@given(shape=st.one_of(st.tuples(st.integers(1, 30)), st.tuples(st.integers(1, 12), st.integers(1, 12))),
       data=st.data())
def test_flat_range_slabs_select_exactly_that_range(shape, data):
    size = int(np.prod(shape))
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size - 1))
    marks = np.zeros(shape, dtype=int)
    for slab in surface_store.flat_range_slabs(shape, first, last):
        marks[slab] += 1
    expected = np.zeros(size, dtype=int)
    expected[first:last + 1] = 1
    np.testing.assert_array_equal(marks.ravel(), expected)
