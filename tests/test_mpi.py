"""Two MPI ranks give exactly the serial surface; rank 0 alone writes; nothing is left behind."""
import os
import shutil
import sys

import numpy as np
import pytest

from losslandscape.io import hdf5_layout
from tests.conftest import run_script

MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
pytestmark = pytest.mark.skipif(not os.path.exists(MPIEXEC), reason='mpiexec (pip package mpich) is not installed')


@pytest.mark.parametrize('dir_type', ['weights', 'states'])
def test_two_ranks_match_serial(tmp_path, checkpoints, dir_type):
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    common = ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:5', '--y=-1:0.5:4',
              '--xnorm', 'filter', '--ynorm', 'filter', '--xignore', 'biasbn', '--dir_type', dir_type,
              '--data_split', '3', '--threads', '1', '--eval_test']
    serial = run_script('plot_surface.py', *common, '--surf_file', tmp_path / 'serial.h5')
    assert serial.returncode == 0, serial.stderr
    parallel = run_script('plot_surface.py', *common, '--mpi', '--surf_file', tmp_path / 'mpi.h5',
                          launcher=(MPIEXEC, '-n', '2'))
    assert parallel.returncode == 0, parallel.stderr
    a, b = hdf5_layout.read_surface(str(tmp_path / 'serial.h5')), hdf5_layout.read_surface(str(tmp_path / 'mpi.h5'))
    for name in ('train_loss', 'train_acc', 'test_loss', 'test_acc'):
        assert b.done[name].all()
        np.testing.assert_array_equal(a.values[name], b.values[name])
    assert parallel.stdout.count('points computed') == 1      # only rank 0 reports
    assert not [p for p in os.listdir(tmp_path) if p.endswith(('.lock', '.tmp'))]


def test_mpi_run_resumes_a_partial_serial_file(tmp_path, checkpoints):
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['mlp'], model)
    common = ['--dataset', 'digits', '--model', 'mlp', '--model_file', model, '--x=-1:1:7', '--xnorm', 'layer',
              '--threads', '1', '--data_split', '3']
    assert run_script('plot_surface.py', *common, '--surf_file', tmp_path / 'ref.h5').returncode == 0
    # A partial file: keep 3 of 7 points, as if a serial run had been killed.
    shutil.copy(tmp_path / 'ref.h5', tmp_path / 'part.h5')
    import h5py
    with h5py.File(tmp_path / 'part.h5', 'r+') as f:
        f['done/train_loss'][[1, 2, 5, 6]] = False
        f['train_loss'][[1, 2, 5, 6]] = np.nan
    run = run_script('plot_surface.py', *common, '--mpi', '--surf_file', tmp_path / 'part.h5',
                     launcher=(MPIEXEC, '-n', '2'))
    assert run.returncode == 0, run.stderr
    assert '4 points computed' in run.stdout
    np.testing.assert_array_equal(hdf5_layout.read_surface(str(tmp_path / 'ref.h5')).values['train_loss'],
                                  hdf5_layout.read_surface(str(tmp_path / 'part.h5')).values['train_loss'])


def test_two_ranks_batching_points_match_serial_one_at_a_time(tmp_path, checkpoints):
    """--points_per_call under MPI: each rank batches its own points; rank 0 still records every one."""
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    common = ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:5', '--y=-1:0.5:3',
              '--xnorm', 'filter', '--ynorm', 'filter', '--data_split', '3', '--threads', '1']
    serial = run_script('plot_surface.py', *common, '--surf_file', tmp_path / 'serial.h5')
    assert serial.returncode == 0, serial.stderr
    parallel = run_script('plot_surface.py', *common, '--mpi', '--points_per_call', '3', '--surf_file',
                          tmp_path / 'mpi.h5', launcher=(MPIEXEC, '-n', '2'))
    assert parallel.returncode == 0, parallel.stderr
    a, b = hdf5_layout.read_surface(str(tmp_path / 'serial.h5')), hdf5_layout.read_surface(str(tmp_path / 'mpi.h5'))
    assert b.done['train_loss'].all() and '15 points computed' in parallel.stdout
    np.testing.assert_allclose(b.values['train_loss'], a.values['train_loss'], rtol=1e-5)
    np.testing.assert_allclose(b.values['train_acc'], a.values['train_acc'], atol=0.6)


@pytest.mark.parametrize('argv,words', [
    (['--x=-1:1'], ['--x', 'MIN:MAX:NUM']),                   # found by the script, before MPI starts
    (['--x=-1:1:3', '--bogus', '1'], ['unrecognized arguments']),   # found by argparse
    (['--x=-1:1:3', '--surf_file', '{d}/model.t7/s.h5'], ['--surf_file', 'is not a folder']),
], ids=['malformed grid', 'unknown flag', 'output folder under a file'])
def test_bad_arguments_are_reported_once(tmp_path, checkpoints, argv, words):
    """Under mpiexec every rank finds the same mistake; only rank 0 says so."""
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['mlp'], model)
    run = run_script('plot_surface.py', '--mpi', '--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                     *[a.format(d=tmp_path) for a in argv], launcher=(MPIEXEC, '-n', '2'))
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in run.stderr, run.stderr
    assert all(word in lines[0] for word in words), lines[0]
