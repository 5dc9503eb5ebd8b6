"""Fault injection: kills at random moments, concurrent writers, torn writes, diverging points,
and properties of the grid parser and the scheduler."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hdf5_layout
from cli import UsageError
from grid import Grid, parse_axis
from scheduler import assign_points
from tests.conftest import ROOT, run_script

MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
GRID = ['--x=-1:1:9', '--y=-1:1:7']


def surface_command(model, surf, mpi=False):
    return ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model, *GRID, '--xnorm', 'filter',
            '--ynorm', 'filter', '--xignore', 'biasbn', '--yignore', 'biasbn', '--threads', '1', '--eval_test',
            '--surf_file', surf] + (['--mpi'] if mpi else [])


@pytest.fixture(scope='module')
def reference(tmp_path_factory, checkpoints):
    """An uninterrupted serial run, its whole duration and the duration of its grid loop."""
    folder = tmp_path_factory.mktemp('reference')
    model = folder / 'model.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    start = time.monotonic()
    run = run_script('plot_surface.py', *surface_command(model, folder / 'ref.h5'))
    assert run.returncode == 0, run.stderr
    loop_seconds = float(run.stdout.split('points computed in ')[1].split(' s')[0])
    return model, hdf5_layout.read_surface(str(folder / 'ref.h5')), time.monotonic() - start, loop_seconds


def session_pids(leader):
    """PIDs of the python processes in the session led by ``leader`` (the ranks of an mpiexec)."""
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as fh:
                fields = fh.read().rsplit(')', 1)[1].split()
            with open(f'/proc/{entry}/cmdline', 'rb') as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if int(fields[3]) == leader and b'plot_surface.py' in cmdline:   # field 6 of stat: session id
            pids.append(int(entry))
    return pids


def kill_at_random_moment(cmd, seconds, rng, mpi, wait_for=None):
    """Start ``cmd`` in its own session, SIGKILL one of its python processes (a random rank under
    MPI) after a random delay in [0, seconds) -- counted from when ``wait_for`` exists, if given --
    then make sure the whole session is gone."""
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while wait_for and not os.path.exists(wait_for) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    delay = rng.uniform(0, seconds)
    time.sleep(delay)
    victims = session_pids(proc.pid) if mpi else [proc.pid]
    if victims:
        os.kill(rng.choice(victims), signal.SIGKILL)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    kill_session(proc.pid)
    proc.wait()
    return delay


def kill_session(session):
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass


# 'any': a moment anywhere in the run (start-up, direction file creation, grid loop);
# 'loop': a moment inside the grid loop, once the surface file exists.
@pytest.mark.parametrize('trial,mpi,moment', [(0, False, 'any'), (1, False, 'loop'), (2, False, 'loop'),
                                              (3, True, 'any'), (4, True, 'loop')])
def test_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, reference, trial, mpi, moment):
    if mpi and not os.path.exists(MPIEXEC):
        pytest.skip('mpiexec (pip package mpich) is not installed')
    model, expected, run_seconds, loop_seconds = reference
    rng = random.Random(1000 + trial)
    surf = tmp_path / 'surf.h5'
    launcher = [MPIEXEC, '-n', '2'] if mpi else []
    cmd = [*launcher, sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, surf, mpi))]
    if moment == 'any':
        kill_at_random_moment(cmd, run_seconds, rng, mpi)
    else:
        kill_at_random_moment(cmd, loop_seconds / (2 if mpi else 1), rng, mpi, wait_for=str(surf))
    if surf.exists():   # whatever the kill left must be a valid, trustworthy file
        partial = hdf5_layout.read_surface(str(surf))
        for name, done in partial.done.items():
            np.testing.assert_array_equal(partial.values[name][done], expected.values[name][done])
    rerun = run_script('plot_surface.py', *surface_command(model, surf, mpi), launcher=tuple(launcher))
    assert rerun.returncode == 0, rerun.stderr
    final = hdf5_layout.read_surface(str(surf))
    for name in ('train_loss', 'train_acc', 'test_loss', 'test_acc'):
        assert final.done[name].all()
        np.testing.assert_array_equal(final.values[name], expected.values[name])
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.lock')]


def test_second_concurrent_run_is_refused(tmp_path, reference):
    model = reference[0]
    surf = tmp_path / 'surf.h5'
    # A long first run (many points) so it is surely still writing when the second one starts.
    long_run = [*surface_command(model, surf), '--x=-1:1:101', '--y=-1:1:101']
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, long_run)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(str(surf) + '.lock') and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_script('plot_surface.py', *long_run)
        assert first.poll() is None, 'the first run ended before the second one started'
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert 'being written by another run' in second.stderr and 'Traceback' not in second.stderr
    # The first run's results so far are intact and a rerun can finish them.
    partial = hdf5_layout.read_surface(str(surf))
    assert partial.done['train_loss'].any()


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / 'file.h5'
    with h5py.File(path, 'w') as f:
        f['a'] = np.arange(3)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with hdf5_layout.atomic_h5(str(path), copy_existing=True) as f:
            f['a'][...] = np.zeros(3)
            raise RuntimeError('crash half-way through a write')
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['file.h5']    # no temporary left behind
    with pytest.raises(RuntimeError):
        with hdf5_layout.atomic_h5(str(tmp_path / 'new.h5')) as f:
            f['x'] = np.zeros(2)
            raise RuntimeError('crash while creating')
    assert not (tmp_path / 'new.h5').exists()


def test_diverging_points_are_results(tmp_path, checkpoints):
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['mlp'], model)
    run = run_script('plot_surface.py', '--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                     '--x=0:1e30:3', '--surf_file', tmp_path / 's.h5', '--threads', '1')
    assert run.returncode == 0, run.stderr
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    assert s.done['train_loss'].all()
    assert np.isfinite(s.values['train_loss'][0]) and not np.isfinite(s.values['train_loss'][1:]).any()
    # NaN outputs have no prediction: the accuracy there is NaN too, not the share of one class.
    assert np.isfinite(s.values['train_acc'][0]) and np.isnan(s.values['train_acc'][1:]).all()
    assert 'diverged' in run.stdout and 'train_loss: 2, train_acc: 2' in run.stdout
    again = run_script('plot_surface.py', '--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                       '--x=0:1e30:3', '--surf_file', tmp_path / 's.h5', '--threads', '1')
    assert '0 points computed' in again.stdout


# ----------------------------------------------------------------------------- properties

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(lo=finite, width=st.floats(min_value=1e-3, max_value=1e3), num=st.integers(min_value=2, max_value=500))
def test_valid_axis_spec_round_trips(lo, width, num):
    hi = lo + width
    axis = parse_axis(f'{lo!r}:{hi!r}:{num}')
    coords = axis.coordinates
    assert len(coords) == num and coords[0] == lo and coords[-1] == hi
    assert np.all(np.diff(coords) > 0)


@settings(max_examples=300, deadline=None)
@given(spec=st.text(max_size=20))
def test_any_text_parses_or_raises_usage_error(spec):
    try:
        axis = parse_axis(spec)
    except UsageError as err:
        assert '--x' in str(err)
    else:
        assert axis.num >= 1 and axis.min <= axis.max


@settings(max_examples=300, deadline=None)
@given(nx=st.integers(1, 40), ny=st.integers(1, 40), nranks=st.integers(1, 64), data=st.data())
def test_every_point_goes_to_exactly_one_rank(nx, ny, nranks, data):
    grid = Grid(parse_axis(f'-1:1:{nx}'), parse_axis(f'0:1:{ny}'))
    pending = sorted(data.draw(st.sets(st.integers(0, grid.num_points - 1))))
    shares = [assign_points(pending, r, nranks) for r in range(nranks)]
    flat = np.concatenate(shares) if shares else np.array([])
    assert sorted(flat.tolist()) == pending
    assert max(map(len, shares)) - min(map(len, shares)) <= 1     # balanced


@settings(max_examples=200, deadline=None)
@given(nx=st.integers(1, 30), ny=st.integers(1, 30), k=st.data())
def test_point_numbering_is_the_meshgrid_convention(nx, ny, k):
    grid = Grid(parse_axis(f'-1:1:{nx}'), parse_axis(f'0:2:{ny}'))
    index = k.draw(st.integers(0, grid.num_points - 1))
    x, y = grid.point(index)
    xx, yy = np.meshgrid(grid.xcoordinates, grid.ycoordinates)
    i, j = grid.index(index)
    assert (xx[i, j], yy[i, j]) == (x, y) and xx.shape == grid.shape


# ----------------------------------------------------------------------------- the other writers

def h5_datasets(path):
    """Every dataset of an HDF5 file (attributes, which hold run ids and arguments, left out)."""
    out = {}
    with h5py.File(path, 'r') as f:
        f.visititems(lambda name, node: out.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None)
    return out


def assert_same_datasets(a, b):
    da, db = h5_datasets(a), h5_datasets(b)
    assert sorted(da) == sorted(db)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)


def kill_then_rerun(script, argv, seconds, rng, wait_for=None):
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, argv)]
    kill_at_random_moment(cmd, seconds, rng, mpi=False, wait_for=wait_for)
    rerun = run_script(script, *argv)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


@pytest.mark.parametrize('trial', [0, 1])
def test_hessian_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, checkpoints, trial):
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['mlp'], model)
    argv = ['--dataset', 'digits', '--model', 'mlp', '--model_file', model, '--x=-1:1:5', '--y=-1:1:3',
            '--xnorm', 'filter', '--ynorm', 'filter', '--data_split', '4', '--threads', '1', '--eig_ncv', '8']
    start = time.monotonic()
    ref = run_script('plot_hessian_eigen.py', *argv, '--surf_file', tmp_path / 'ref.h5')
    assert ref.returncode == 0, ref.stderr
    seconds = time.monotonic() - start
    surf = tmp_path / 'killed.h5'
    kill_then_rerun('plot_hessian_eigen.py', [*argv, '--surf_file', surf], seconds, random.Random(2000 + trial),
                    wait_for=str(surf) if trial else None)
    expected, final = hdf5_layout.read_surface(str(tmp_path / 'ref.h5')), hdf5_layout.read_surface(str(surf))
    for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG):
        assert final.done[name].all()
        np.testing.assert_array_equal(final.values[name], expected.values[name])


def test_trajectory_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, checkpoints):
    """plot_trajectory.py writes its direction and projection files whole or not at all."""
    from tests.conftest import train_briefly
    import torch
    for folder in ('ref', 'killed'):
        (tmp_path / folder).mkdir()
        for epoch in range(4):   # four checkpoints along a short training path
            net = train_briefly('mlp', seed=0, steps=5 * (epoch + 1))
            torch.save({'state_dict': net.state_dict(), 'epoch': epoch, 'acc': 0.0},
                       tmp_path / folder / f'model_{epoch}.t7')
    argv = ['--dataset', 'digits', '--model', 'mlp', '--max_epoch', '3', '--threads', '1', '--eval']
    start = time.monotonic()
    ref = run_script('plot_trajectory.py', *argv, '--model_folder', tmp_path / 'ref')
    assert ref.returncode == 0, ref.stderr
    kill_then_rerun('plot_trajectory.py', [*argv, '--model_folder', tmp_path / 'killed'],
                    time.monotonic() - start, random.Random(3000))
    pca = os.path.join('PCA_weights_save_epoch=1', 'directions.h5')
    for name in (pca, pca + '_proj_cos.h5'):
        assert_same_datasets(tmp_path / 'ref' / name, tmp_path / 'killed' / name)
