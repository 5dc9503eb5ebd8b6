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
from hypothesis import given, settings
from hypothesis import strategies as st

from losslandscape.curvature import hessian
from losslandscape.engine.grid import Grid, parse_axis
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.parallel.scheduler import are_neighbours, assign_chains, assign_points, serpentine
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


def descendants(pid):
    """PIDs of every process below ``pid`` (mpiexec's proxy and ranks, which start their own
    sessions, so neither a session nor a process group finds them)."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as fh:
                parent = int(fh.read().rsplit(')', 1)[1].split()[1])   # field 4 of stat: the parent
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def python_ranks(pid):
    """The python processes under an mpiexec (its ranks)."""
    ranks = []
    for child in descendants(pid):
        try:
            with open(f'/proc/{child}/cmdline', 'rb') as fh:
                if b'python' in fh.read():
                    ranks.append(child)
        except OSError:
            pass
    return ranks


def kill_tree(pid):
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def killed_run(cmd, fault_env=None, random_kill=None, mpi=False):
    """Run ``cmd`` until it dies by SIGKILL; return what proves it did.

    ``fault_env``: fault_injection variables, for a kill (LANDSCAPE_KILL_AT) or a stall
    (LANDSCAPE_STALL_AT) at a named moment. ``random_kill=(rng, seconds)``: SIGKILL one of its
    python processes (a random rank under MPI) after a random delay in [0, seconds); with a stall
    set, the run cannot finish before that, so the kill surely interrupts it.
    Returns (exit status, output): -9 for a serial run; mpiexec reports a rank killed by signal 9
    with exit status 9 and 'signal 9' in its message."""
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1', **(fault_env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if random_kill:
            rng, seconds = random_kill
            time.sleep(rng.uniform(0, seconds))
            victims, deadline = [], time.monotonic() + 60
            while not victims and time.monotonic() < deadline:   # mpiexec may not have started its ranks yet
                victims = python_ranks(proc.pid) if mpi else [proc.pid]
                time.sleep(0.01)
            os.kill(rng.choice(victims), signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        kill_tree(proc.pid)   # a stalled rank would otherwise sleep on
        proc.wait()
    return proc.returncode, output


def assert_died_by_sigkill(status, output, mpi):
    if mpi:
        assert status == 9 and 'signal 9' in output, (status, output[-2000:])
    else:
        assert status == -signal.SIGKILL, (status, output[-2000:])


def points_still_missing(surf, total, names):
    """How many points the killed run left without every one of ``names`` (all, if no file)."""
    if not os.path.exists(surf):
        return total
    partial = hdf5_layout.read_surface(str(surf))
    missing = np.zeros(partial.shape, dtype=bool)
    for name in names:
        missing |= ~partial.done[name]
    return int(missing.sum())


def computed_by(run):
    return int(run.stdout.split(' points computed')[0].rsplit(' ', 1)[-1])


SURFACE_NAMES = ('train_loss', 'train_acc', 'test_loss', 'test_acc')
NUM_POINTS = 9 * 7
# Results flushed after every point, so that 'point:N' means exactly N points in the file.
PER_POINT_FLUSH = {'LANDSCAPE_FLUSH_SECONDS': '0'}


# Deterministic trials kill at a named moment (after N points reached the file or were sent; the
# file is flushed after every point here, PER_POINT_FLUSH);
# random ones kill at a random time, the run held by a stall so that the moment is surely before
# its end (without the stall, a kill landing after the end would prove nothing).
@pytest.mark.parametrize('mpi,fault_env,random_seconds', [
    (False, {'LANDSCAPE_KILL_AT': 'point:1'}, None),
    (False, {'LANDSCAPE_KILL_AT': 'point:40'}, None),
    (False, {'LANDSCAPE_STALL_AT': 'point:30'}, 'run'),         # start-up, directions, loop or stall
    (True, {'LANDSCAPE_KILL_AT': 'point:5', 'LANDSCAPE_FAULT_RANK': '1'}, None),   # a worker dies
    (True, {'LANDSCAPE_KILL_AT': 'point:12', 'LANDSCAPE_FAULT_RANK': '0'}, None),  # the writer dies
    (True, {'LANDSCAPE_STALL_AT': 'point:15'}, 'run'),
], ids=['serial-first-point', 'serial-mid-loop', 'serial-random', 'mpi-worker', 'mpi-root', 'mpi-random'])
def test_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, reference, mpi, fault_env, random_seconds):
    if mpi and not os.path.exists(MPIEXEC):
        pytest.skip('mpiexec (pip package mpich) is not installed')
    model, expected, run_seconds, _ = reference
    surf = tmp_path / 'surf.h5'
    launcher = [MPIEXEC, '-n', '2'] if mpi else []
    cmd = [*launcher, sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, surf, mpi))]
    random_kill = (random.Random(str(fault_env)), run_seconds) if random_seconds else None
    status, err = killed_run(cmd, {**PER_POINT_FLUSH, **fault_env}, random_kill, mpi)
    assert_died_by_sigkill(status, err, mpi)
    missing = points_still_missing(surf, NUM_POINTS, SURFACE_NAMES)
    assert missing > 0, 'the kill came after the run had finished'
    if surf.exists():   # whatever the kill left must be a valid, trustworthy file
        partial = hdf5_layout.read_surface(str(surf))
        for name, done in partial.done.items():
            np.testing.assert_array_equal(partial.values[name][done], expected.values[name][done])
    rerun = run_script('plot_surface.py', *surface_command(model, surf, mpi), launcher=tuple(launcher))
    assert rerun.returncode == 0, rerun.stderr
    assert computed_by(rerun) == missing
    final = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        assert final.done[name].all()
        np.testing.assert_array_equal(final.values[name], expected.values[name])
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.lock')]


def test_kill_with_a_long_flush_interval_loses_only_the_unflushed_points(tmp_path, reference):
    """Results recorded in memory but not yet flushed are all a kill -9 loses: the file keeps exactly
    what the last flush wrote, and the rerun computes the rest, ending equal to an uninterrupted run."""
    model, expected, _, _ = reference
    surf = tmp_path / 'surf.h5'
    cmd = [sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, surf))]
    status, err = killed_run(cmd, {**PER_POINT_FLUSH, 'LANDSCAPE_KILL_AT': 'point:20'})
    assert_died_by_sigkill(status, err, mpi=False)
    assert points_still_missing(surf, NUM_POINTS, SURFACE_NAMES) == NUM_POINTS - 20
    before = hdf5_layout.read_surface(str(surf))
    # This run flushes only when it ends; it dies after recording 30 more points in memory.
    status, err = killed_run(cmd, {'LANDSCAPE_FLUSH_SECONDS': '3600', 'LANDSCAPE_KILL_AT': 'recorded:30'})
    assert_died_by_sigkill(status, err, mpi=False)
    after = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        np.testing.assert_array_equal(after.done[name], before.done[name])
        np.testing.assert_array_equal(after.values[name], before.values[name])
    rerun = run_script('plot_surface.py', *surface_command(model, surf))
    assert rerun.returncode == 0, rerun.stderr
    assert computed_by(rerun) == NUM_POINTS - 20
    final = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        assert final.done[name].all()
        np.testing.assert_array_equal(final.values[name], expected.values[name])


def test_kill_between_values_and_done_masks_leaves_a_trustworthy_file(tmp_path, reference):
    """A flush writes values, then done masks: killed in between, the file holds the new values
    but does not claim them, so the rerun computes those points again."""
    model, expected, _, _ = reference
    surf = tmp_path / 'surf.h5'
    cmd = [sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, surf))]
    status, err = killed_run(cmd, {**PER_POINT_FLUSH, 'LANDSCAPE_KILL_AT': 'values:10'})
    assert_died_by_sigkill(status, err, mpi=False)
    partial = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        done = partial.done[name].ravel()
        assert done[:9].all() and not done[9:].any()
        # The 10th point's value reached the file, its mask did not.
        assert partial.values[name].ravel()[9] == expected.values[name].ravel()[9]
    rerun = run_script('plot_surface.py', *surface_command(model, surf))
    assert rerun.returncode == 0, rerun.stderr
    assert computed_by(rerun) == NUM_POINTS - 9
    final = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        np.testing.assert_array_equal(final.values[name], expected.values[name])


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_stop_signal_writes_every_recorded_point_before_the_run_ends(tmp_path, reference, signum):
    """SIGTERM (a scheduler's pre-emption) or Ctrl-C ends the run with one line saying what is
    stored and status 143 or 130 once every point recorded so far is in the file, even with no
    flush due for an hour."""
    model, expected, _, _ = reference
    surf, log = tmp_path / 'surf.h5', tmp_path / 'stderr.txt'
    cmd = [sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, surf))]
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1', 'LANDSCAPE_FLUSH_SECONDS': '3600',
           'LANDSCAPE_STALL_AT': 'recorded:25'}
    with open(log, 'w') as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while 'stalled at recorded:25' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert points_still_missing(surf, NUM_POINTS, SURFACE_NAMES) == NUM_POINTS   # none flushed yet
        proc.send_signal(signum)
        status = proc.wait(timeout=60)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    output = log.read_text()
    assert status == 128 + signum, output[-2000:]
    assert 'Traceback' not in output
    last_line = output.replace('\r', '\n').strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert f'stopped by {name}; 25 of {NUM_POINTS} points are in {surf}; rerun the same command' in last_line
    assert points_still_missing(surf, NUM_POINTS, SURFACE_NAMES) == NUM_POINTS - 25
    rerun = run_script('plot_surface.py', *surface_command(model, surf))
    assert rerun.returncode == 0, rerun.stderr
    assert computed_by(rerun) == NUM_POINTS - 25
    final = hdf5_layout.read_surface(str(surf))
    for name in SURFACE_NAMES:
        np.testing.assert_array_equal(final.values[name], expected.values[name])


def test_second_concurrent_run_is_refused(tmp_path, reference):
    model = reference[0]
    surf = tmp_path / 'surf.h5'
    # A long first run (many points) so it is surely still writing when the second one starts.
    long_run = [*surface_command(model, surf), '--x=-1:1:101', '--y=-1:1:101']
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1', **PER_POINT_FLUSH}
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
        with hdf5_layout.atomic_h5(str(path)) as f:
            f['a'] = np.zeros(3)
            raise RuntimeError('crash half-way through a write')
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['file.h5']    # no temporary left behind
    with pytest.raises(RuntimeError):
        with hdf5_layout.atomic_h5(str(tmp_path / 'new.h5')) as f:
            f['x'] = np.zeros(2)
            raise RuntimeError('crash while creating')
    assert not (tmp_path / 'new.h5').exists()


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


@settings(max_examples=300, deadline=None)
@given(nx=st.integers(1, 40), ny=st.integers(1, 40), nranks=st.integers(1, 64), one_d=st.booleans(), data=st.data())
def test_chains_give_every_point_to_one_rank_as_a_walk_between_neighbours(nx, ny, nranks, one_d, data):
    """plot_hessian_eigen.py's order: each rank's share of the whole grid is a walk from neighbour to
    neighbour (so each warm solve starts from the point before); with points missing, every point
    still goes to exactly one rank, the shares balanced."""
    shape = (nx,) if one_d else (ny, nx)
    total = int(np.prod(shape))
    shares = [assign_chains(np.arange(total), r, nranks, shape) for r in range(nranks)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(total))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for share in shares:
        assert all(are_neighbours(a, b, shape) for a, b in zip(share[:-1], share[1:]))
    pending = sorted(data.draw(st.sets(st.integers(0, total - 1))))
    shares = [assign_chains(pending, r, nranks, shape) for r in range(nranks)]
    assert sorted(np.concatenate(shares).tolist()) == pending
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


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


def assert_within_eig_tol(actual, expected, tol):
    """Both eigenvalue maps of ``actual`` within ``tol`` x |max_eig| of ``expected``'s, point by point:
    what warm solves promise (hessian.warm_extremes)."""
    scale = tol * np.abs(expected.values[hdf5_layout.MAX_EIG])
    for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG):
        difference = np.abs(actual.values[name] - expected.values[name])
        assert (difference <= scale).all(), (name, (difference / scale).max())


@pytest.mark.parametrize('solver,fault_env,random_kill', [('cold', {'LANDSCAPE_KILL_AT': 'point:4'}, False),
                                                         ('warm', {'LANDSCAPE_KILL_AT': 'point:4'}, False),
                                                         ('warm', {'LANDSCAPE_STALL_AT': 'point:8'}, True)],
                         ids=['cold-after-4-points', 'warm-after-4-points', 'warm-random'])
def test_hessian_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, checkpoints, solver, fault_env, random_kill):
    """Cold solves: the rerun's points equal the uninterrupted run's bit for bit. Warm solves: the
    rerun starts its chain afresh with a cold solve, so its points agree to the solver's tolerance."""
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['mlp'], model)
    argv = ['--dataset', 'digits', '--model', 'mlp', '--model_file', model, '--x=-1:1:5', '--y=-1:1:3',
            '--xnorm', 'filter', '--ynorm', 'filter', '--data_split', '4', '--threads', '1', '--eig_ncv', '8',
            '--eig_solver', solver]
    start = time.monotonic()
    ref = run_script('plot_hessian_eigen.py', *argv, '--surf_file', tmp_path / 'ref.h5')
    assert ref.returncode == 0, ref.stderr
    seconds = time.monotonic() - start
    surf = tmp_path / 'killed.h5'
    argv += ['--surf_file', surf]
    cmd = [sys.executable, os.path.join(ROOT, 'plot_hessian_eigen.py'), *map(str, argv)]
    kill_at_random = (random.Random(2000), seconds) if random_kill else None
    status, err = killed_run(cmd, {**PER_POINT_FLUSH, **fault_env}, kill_at_random)
    assert_died_by_sigkill(status, err, mpi=False)
    names = (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)
    missing = points_still_missing(surf, 15, names)
    assert missing > 0, 'the kill came after the run had finished'
    rerun = run_script('plot_hessian_eigen.py', *argv)
    assert rerun.returncode == 0, rerun.stderr
    assert computed_by(rerun) == missing
    expected, final = hdf5_layout.read_surface(str(tmp_path / 'ref.h5')), hdf5_layout.read_surface(str(surf))
    for name in names:
        assert final.done[name].all()
    if solver == 'cold':
        for name in names:
            np.testing.assert_array_equal(final.values[name], expected.values[name])
        return
    assert_within_eig_tol(final, expected, hessian.DEFAULT_EIG_TOL)
    # The first point the rerun solved (the points reach the file in serpentine order) starts a new
    # chain: cold, where the uninterrupted run, whose grid's first point is its only cold one, solved
    # it warm (unless the kill came before any point).
    paths = final.values[hdf5_layout.EIG_SOLVE].ravel()
    first_rerun = serpentine(np.arange(15), final.shape)[15 - missing]
    assert paths[first_rerun] == 0
    assert expected.values[hdf5_layout.EIG_SOLVE].ravel()[first_rerun] == (1 if missing < 15 else 0)


@pytest.mark.parametrize('fault_env,random_kill', [({'LANDSCAPE_KILL_AT': 'file:1'}, False),
                                                  ({'LANDSCAPE_STALL_AT': 'file:1'}, True)],
                         ids=['after-directions', 'random'])
def test_trajectory_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, checkpoints, fault_env, random_kill):
    """plot_trajectory.py writes its direction and projection files whole or not at all; killed
    between the two (or at a random moment before the second), a rerun makes both as they would be."""
    import torch

    from tests.conftest import train_briefly
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
    killed = [*argv, '--model_folder', tmp_path / 'killed']
    cmd = [sys.executable, os.path.join(ROOT, 'plot_trajectory.py'), *map(str, killed)]
    status, err = killed_run(cmd, fault_env, (random.Random(3000), time.monotonic() - start) if random_kill else None)
    assert_died_by_sigkill(status, err, mpi=False)
    pca = os.path.join('PCA_weights_save_epoch=1', 'directions.h5')
    assert not (tmp_path / 'killed' / (pca + '_proj_cos.h5')).exists(), 'the kill came after the run had finished'
    rerun = run_script('plot_trajectory.py', *killed)
    assert rerun.returncode == 0, rerun.stderr
    for name in (pca, pca + '_proj_cos.h5'):
        assert_same_datasets(tmp_path / 'ref' / name, tmp_path / 'killed' / name)
