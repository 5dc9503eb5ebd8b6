"""Bad input: a one-line error naming the problem, exit status 2, no traceback, no file changed.

Each case is (name, argv builder, words the message must contain). Cases run in-process through
parsing.run_main (the same path as the command line, minus interpreter start-up); a few also run as
real subprocesses to prove the command-line wiring.
"""
import importlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from losslandscape import plot_surface
from losslandscape.cli import parsing
from losslandscape.io import hdf5_layout
from losslandscape.io.hdf5_layout import FileLock
from tests.conftest import assert_one_line_error, call_main, run_script, snapshot

DIGITS = ['--dataset', 'digits', '--threads', '1']


@pytest.fixture
def workdir(tmp_path, checkpoints):
    """A folder with a model, a finished 1D surface and its direction file, and some junk files."""
    shutil.copy(checkpoints['cnn_bn'], tmp_path / 'cnn.t7')
    shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    (tmp_path / 'junk.t7').write_bytes(b'not a checkpoint at all')
    (tmp_path / 'junk.h5').write_bytes(b'\x89HDF\r\n\x1a\n' + b'\x00' * 40)   # a truncated HDF5 file
    plot_surface.main([*DIGITS, '--model', 'cnn_bn', '--model_file', str(tmp_path / 'cnn.t7'), '--x=-1:1:3',
                       '--xnorm', 'filter', '--data_split', '8', '--surf_file', str(tmp_path / 'surf.h5')])
    with h5py.File(tmp_path / 'proj_like.h5', 'w') as f:
        f['something'] = np.zeros(3)
    torch.save(torch.zeros(5, dtype=torch.int64), tmp_path / 'labels.pt')
    # A direction, a projection and a curve that each hold one NaN.
    shutil.copy(DIR.format(d=tmp_path), tmp_path / 'nan_dir.h5')
    with h5py.File(tmp_path / 'nan_dir.h5', 'r+') as f:
        f[f'{hdf5_layout.XDIRECTION}/1'][(0,) * f[f'{hdf5_layout.XDIRECTION}/1'].ndim] = np.nan
    with h5py.File(tmp_path / 'nan_proj.h5', 'w') as f:
        f[hdf5_layout.PROJ_XCOORD], f[hdf5_layout.PROJ_YCOORD] = [0.0, np.nan, 1.0], [0.0, 0.5, 1.0]
    with h5py.File(tmp_path / 'nan_curve.h5', 'w') as f:
        f[f'{hdf5_layout.CURVE_BENDS}/0/w'] = np.array([1.0, np.inf], np.float32)
        for key in hdf5_layout.CURVE_REQUIRED_ATTRS:
            f.attrs[key] = json.dumps(3 if key == hdf5_layout.NUM_BENDS else 'x')
    from tests.fixtures.custom import three_class_model
    torch.save(three_class_model().state_dict(), tmp_path / 'three.t7')
    return tmp_path


MODEL = ['--model', 'cnn_bn', '--model_file', '{d}/cnn.t7']
DIR = '{d}/cnn.t7_weights_xnorm=filter.h5'
PLOT_SURFACE_CASES = [
    ('x missing num', [*MODEL, '--x=-1:1'], ['--x', 'MIN:MAX:NUM']),
    ('x not numbers', [*MODEL, '--x=a:b:c'], ['--x', 'numbers']),
    ('x num zero', [*MODEL, '--x=-1:1:0'], ['--x', 'at least 1']),
    ('x num fractional', [*MODEL, '--x=-1:1:2.5'], ['--x', 'whole number']),
    ('x min above max', [*MODEL, '--x=1:-1:5'], ['--x', 'MIN must not exceed MAX']),
    ('y min above max', [*MODEL, '--y=1:0:3'], ['--y', 'MIN must not exceed MAX']),
    ('x infinite', [*MODEL, '--x=-inf:1:3'], ['--x', 'finite']),
    ('missing model file', ['--model', 'cnn_bn', '--model_file', '{d}/nope.t7'], ['--model_file', 'does not exist']),
    ('second model without the first', ['--model', 'cnn_bn', '--model_file2', '{d}/cnn.t7', '--x=0:1:2'],
     ['--model_file2/--model_file3 need --model_file']),
    ('unknown model', ['--model', 'resnet9000', '--model_file', '{d}/cnn.t7'], ['unknown --model', 'resnet9000']),
    ('bad model factory', ['--model', 'nosuchpkg.mod:make', '--model_file', '{d}/cnn.t7'], ['--model', 'cannot import']),
    ('checkpoint for another model', ['--model', 'cnn_bn', '--model_file', '{d}/mlp.t7', '--x=-1:1:3'],
     ['does not fit the model', 'features.0.0.weight']),
    ('checkpoint not a checkpoint', ['--model', 'cnn_bn', '--model_file', '{d}/junk.t7', '--x=-1:1:3'],
     ['not a readable PyTorch checkpoint']),
    ('unknown xnorm', [*MODEL, '--xnorm', 'filtr'], ['--xnorm', 'invalid choice']),
    ('unknown dir_type', [*MODEL, '--dir_type', 'weight'], ['--dir_type', 'invalid choice']),
    ('unknown loss', [*MODEL, '--loss_name', 'hinge'], ['--loss_name', "'hinge'", 'causal_lm']),
    ('direction file for another model', ['--model', 'mlp', '--model_file', '{d}/mlp.t7', '--dir_file', DIR, '--x=-1:1:3'],
     ['direction file', 'does not fit the model']),
    ('direction file with NaN', [*MODEL, '--dir_file', '{d}/nan_dir.h5', '--x=-1:1:3'],
     ['direction file', 'xdirection/1 holds inf or NaN']),
    ('projection file with NaN', [*MODEL, '--x=-1:1:3', '--y=-1:1:3', '--plot', '--proj_file', '{d}/nan_proj.h5'],
     ['projection file', 'proj_xcoord holds inf or NaN']),
    ('curve file with inf', [*MODEL, '--curve_file', '{d}/nan_curve.h5', '--x=0:1:3'],
     ['--curve_file', 'bends/0/w holds inf or NaN']),
    ('direction file missing', [*MODEL, '--dir_file', '{d}/nodir.h5'], ['--dir_file', 'does not exist']),
    ('direction file is a surface file', [*MODEL, '--dir_file', '{d}/surf.h5', '--x=-1:1:3'], ['not a direction file']),
    ('1D direction file for a 2D grid', [*MODEL, '--dir_file', DIR, '--x=-1:1:3', '--y=-1:1:3'], ['no y direction']),
    ('surface for another grid', [*MODEL, '--xnorm', 'filter', '--x=-1:1:5', '--surf_file', '{d}/surf.h5',
                                  '--data_split', '8'], ['another grid', '--x']),
    ('surface for another model file', ['--model', 'cnn_bn', '--model_file', '{d}/cnn_copy.t7', '--dir_file', DIR,
                                        '--x=-1:1:3', '--surf_file', '{d}/surf.h5', '--data_split', '8'], ['model_file=']),
    ('surface for other data', [*MODEL, '--xnorm', 'filter', '--x=-1:1:3', '--surf_file', '{d}/surf.h5',
                                '--data_split', '4'], ['data_split=8']),
    ('surface file truncated', [*MODEL, '--x=-1:1:3', '--surf_file', '{d}/junk.h5'], ['not a readable HDF5 file']),
    ('data split too large', [*MODEL, '--x=-1:1:3', '--data_split', '100000'], ['--data_split', 'larger than']),
    ('split index out of range', [*MODEL, '--data_split', '4', '--split_idx', '4'], ['--split_idx']),
    ('unknown dataset', ['--dataset', 'mnist', *MODEL], ['unknown --dataset', 'mnist']),
    ('empty custom dataset', ['--dataset', 'tests.fixtures.custom:empty_data', '--model',
                              'tests.fixtures.custom:three_class_model', '--model_file', '{d}/three.t7'], ['empty']),
    ('fold_bn on an untraceable model', ['--dataset', 'tests.fixtures.custom:three_class_data', '--model',
                                         'tests.fixtures.custom:branching_model', '--model_file', '{d}/three.t7',
                                         '--fold_bn', '--x=-1:1:3'], ['--fold_bn', 'cannot trace']),
    ('points_per_call zero', [*MODEL, '--points_per_call', '0'], ['--points_per_call']),
    ('points_per_call with fold_bn', [*MODEL, '--points_per_call', '2', '--fold_bn'], ['--points_per_call', '--fold_bn']),
    ('same_dir without y', [*MODEL, '--same_dir'], ['--same_dir', '--y']),
    ('batch size zero', [*MODEL, '--batch_size', '0'], ['--batch_size']),
    ('projection file that is not one', [*MODEL, '--x=-1:1:3', '--y=-1:1:3', '--plot', '--proj_file',
                                         '{d}/proj_like.h5'], ['not a projection file']),
    ('projection file without plot', [*MODEL, '--x=-1:1:3', '--y=-1:1:3', '--proj_file', '{d}/proj_like.h5'],
     ['--proj_file', '--plot']),
    ('projection file on a 1D plot', [*MODEL, '--x=-1:1:3', '--plot', '--proj_file', '{d}/proj_like.h5'],
     ['--proj_file', '--y']),
    ('ngpu without cuda', [*MODEL, '--ngpu', '2'], ['--ngpu', '--cuda']),
    # Refused before any CUDA check, so this runs without a GPU.
    ('mpi with several GPUs per rank', [*MODEL, '--mpi', '--cuda', '--ngpu', '2'],
     ['--mpi', '--ngpu > 1', 'each MPI rank takes one GPU']),
    ('labels of another length', [*MODEL, '--x=-1:1:3', '--train_labels', '{d}/labels.pt'], ['--train_labels', '5 labels']),
    ('surface file in a missing folder under a file', [*MODEL, '--x=-1:1:3', '--surf_file', '{d}/cnn.t7/a/s.h5'],
     ['--surf_file', 'is not a folder']),
    ('surface file under a file', [*MODEL, '--x=-1:1:3', '--surf_file', '{d}/cnn.t7/s.h5'],
     ['--surf_file', 'is not a folder']),
    ('plot contours vmin above vmax', [*MODEL, '--x=-1:1:3', '--y=-1:1:3', '--plot', '--vmin', '5', '--vmax', '1'],
     ['--vmin', 'below --vmax']),
    ('plot contours vlevel zero', [*MODEL, '--x=-1:1:3', '--y=-1:1:3', '--plot', '--vlevel', '0'], ['--vlevel']),
    ('plot curve loss_max negative', [*MODEL, '--x=-1:1:3', '--plot', '--loss_max', '-1'], ['--loss_max']),
    ('plot curve of one point', [*MODEL, '--x=0:0:1', '--plot'], ['--plot', 'at least 2 points']),
    ('plot contours of one row', [*MODEL, '--x=-1:1:3', '--y=0:0:1', '--plot'], ['--plot', 'each axis']),
    ('samples zero', [*MODEL, '--samples', '0'], ['--samples', 'at least 1']),
    ('samples more than the training data', [*MODEL, '--x=-1:1:3', '--data_split', '8', '--samples', '200'],
     ['--samples 200', 'more than the 180 samples of the training data']),
    ('target stderr zero', [*MODEL, '--target_stderr', '0'], ['--target_stderr', 'in (0, 1)']),
    ('target stderr one', [*MODEL, '--target_stderr', '1'], ['--target_stderr', 'in (0, 1)']),
    ('target stderr not a number', [*MODEL, '--target_stderr', 'nan'], ['--target_stderr', 'in (0, 1)']),
    ('samples and target stderr', [*MODEL, '--samples', '100', '--target_stderr', '0.01'],
     ['--samples and --target_stderr']),
    ('sample seed negative', [*MODEL, '--samples', '100', '--sample_seed', '-1'], ['--sample_seed']),
    ('surface of the whole data resumed on a sample', [*MODEL, '--xnorm', 'filter', '--x=-1:1:3', '--surf_file',
                                                       '{d}/surf.h5', '--data_split', '8', '--samples', '50'],
     ['samples=None, not 50']),
    ('cifar10 folder missing', ['--dataset', 'cifar10', '--datapath', '{d}/nodata', '--model', 'resnet20',
                                '--model_file', '{d}/cnn.t7'], ['--datapath', 'does not exist']),
]


def fill(argv, folder):
    return [a.format(d=folder) for a in argv]


@pytest.mark.parametrize('name,argv,words', PLOT_SURFACE_CASES, ids=[c[0] for c in PLOT_SURFACE_CASES])
def test_plot_surface_bad_input(workdir, capsys, name, argv, words):
    shutil.copy(workdir / 'cnn.t7', workdir / 'cnn_copy.t7')
    before = snapshot(workdir)
    code, err = call_main(plot_surface.main, [*DIGITS, *fill(argv, workdir)], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(workdir) == before


def test_read_only_checkpoint_folder(workdir, capsys, monkeypatch):
    """Default file names lie beside --model_file: a folder the user cannot write to is reported
    before any work. (Tests may run as root, who can write anywhere: the check is what is faked.)"""
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: False if os.path.abspath(path) == str(workdir)
                        else real_access(path, mode))
    before = snapshot(workdir)
    code, err = call_main(plot_surface.main, [*DIGITS, *fill(MODEL, workdir), '--x=-1:1:3', '--idx', '3'], capsys)
    assert_one_line_error(code, err, ['direction file', 'is not writable', '--dir_file'])
    code, err = call_main(plot_surface.main, [*DIGITS, *fill(MODEL, workdir), '--x=-1:1:3', '--xnorm', 'filter',
                                              '--data_split', '8', '--dir_file', fill([DIR], workdir)[0]], capsys)
    assert_one_line_error(code, err, ['surface file', 'is not writable', '--surf_file'])
    assert snapshot(workdir) == before


def test_surface_locked_by_another_run(workdir, capsys):
    before = snapshot(workdir)
    with FileLock(str(workdir / 'surf.h5')):
        code, err = call_main(plot_surface.main, [*DIGITS, *fill(MODEL, workdir), '--xnorm', 'filter', '--x=-1:1:3',
                                                  '--surf_file', workdir / 'surf.h5', '--data_split', '8'], capsys)
        assert_one_line_error(code, err, ['being written by another run'])
    before.pop('surf.h5.lock', None)
    assert snapshot(workdir) == before


@pytest.mark.parametrize('argv,words', [
    (['--x=-1:1'], ['--x', 'MIN:MAX:NUM']),
    (['--model', 'resnet9000'], ['unknown --model']),
    (['--xnorm', 'filtr'], ['invalid choice']),
], ids=['malformed grid', 'unknown model', 'bad choice'])
def test_command_line_errors_are_one_line(workdir, argv, words):
    run = run_script('plot_surface.py', *DIGITS, *fill(MODEL, workdir), *argv)
    assert_one_line_error(run.returncode, run.stderr, words)


def test_mpi_without_an_mpi_runtime(workdir, tmp_path_factory):
    fake = tmp_path_factory.mktemp('nompi')
    (fake / 'mpi4py').mkdir()
    (fake / 'mpi4py' / '__init__.py').write_text('')   # mpi4py present, its MPI module missing
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = run_script('plot_surface.py', *DIGITS, *fill(MODEL, workdir), '--mpi', '--x=-1:1:3',
                     env={'PYTHONPATH': f'{fake}{os.pathsep}{root}'})
    assert_one_line_error(run.returncode, run.stderr, ['--mpi needs mpi4py'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu(workdir, capsys):
    code, err = call_main(plot_surface.main, [*DIGITS, *fill(MODEL, workdir), '--cuda', '--x=-1:1:3'], capsys)
    assert_one_line_error(code, err, ['--cuda', 'no CUDA GPU'])


SCRIPTS = ['plot_surface', 'plot_hessian_eigen', 'plot_trajectory', 'plot_1D', 'plot_2D', 'h52vtp', 'cifar10.main']


@pytest.mark.parametrize('module', SCRIPTS)
def test_every_option_has_help(module):
    parser = importlib.import_module(module).get_args_parser()
    parser.format_help()          # raises if a help string is malformed (a bad %-format)
    for action in parser._actions:
        if action.option_strings and action.dest != 'help':
            assert action.help, f'{module}: {action.option_strings} has no help'


@pytest.mark.parametrize('module', SCRIPTS)
def test_defaults_written_into_help_by_hand_are_the_defaults(module):
    """A help that speaks of its default itself gets none added (DefaultsHelpFormatter), so a value
    typed into it must follow the option's real default."""
    parser = importlib.import_module(module).get_args_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.help or 'default' not in action.help or action.default in (None, False, ''):
            continue
        text = formatter._expand_help(action)
        number = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
        stated = f'{action.default:g}' if number else str(action.default)
        assert stated in text, (module, action.dest, action.default, text)


def defaults_help(**option):
    """The help text that parsing.ArgumentParser prints for one option --opt declared with ``option``."""
    parser = parsing.ArgumentParser('prog')
    parser.add_argument('--opt', **option)
    return ' '.join(parser.format_help().split())


@pytest.mark.parametrize('option,expected', [
    (dict(default=0.1, type=float, help='a rate'), 'a rate (default: 0.1)'),
    (dict(default=3, type=int, help='points (default %(default)s: one at a time)'),
     'points (default 3: one at a time)'),
    (dict(action='store_true', help='a switch'), 'a switch'),
    (dict(default=None, help='threads'), 'threads'),
    (dict(default='', help='a file'), 'a file'),
], ids=['value', 'help names its default', 'switch off', 'none', 'empty string'])
def test_defaults_formatter_states_a_default_only_once_and_only_when_there_is_one(option, expected):
    text = defaults_help(**option)
    assert text.endswith(expected), text
    assert text.count('default') == expected.count('default'), text


# The other scripts that write files: the same contract, against the same folder of results.
OTHER_SCRIPT_CASES = [
    ('plot_hessian_eigen', [*MODEL, '--eig_tol', '2'], ['--eig_tol']),
    ('plot_hessian_eigen', [*MODEL, '--compile'], ['--compile']),
    ('plot_hessian_eigen', [*MODEL, '--eig_solver', 'fast'], ['--eig_solver', 'invalid choice']),
    ('plot_hessian_eigen', [*MODEL, '--eig_solver', 'cold', '--warm_start'], ['--eig_solver cold', '--warm_start', 'disagree']),
    ('plot_hessian_eigen', [*MODEL, '--eval_test'], ['--eval_test']),
    ('plot_hessian_eigen', [*MODEL, '--fold_bn'], ['--fold_bn']),
    ('plot_hessian_eigen', [*MODEL, '--amp'], ['--amp']),
    ('plot_hessian_eigen', [*MODEL, '--points_per_call', '4'], ['--points_per_call']),
    ('plot_hessian_eigen', [*MODEL, '--mpi', '--cuda', '--ngpu', '2'], ['--mpi', '--ngpu > 1', 'one GPU']),
    ('plot_hessian_eigen', [*MODEL, '--x=1:0:3'], ['--x', 'MIN must not exceed MAX']),
    ('plot_hessian_eigen', [*MODEL, '--xnorm', 'filter', '--x=-1:1:5', '--surf_file', '{d}/surf.h5',
                            '--data_split', '8'], ['another grid']),
    ('plot_trajectory', ['--model', 'cnn_bn', '--model_folder', '{d}/nofolder'], ['--model_folder', 'not a folder']),
    ('plot_trajectory', ['--model', 'cnn_bn', '--model_folder', '{d}', '--max_epoch', '2'], ['checkpoint']),
    ('plot_trajectory', ['--model', 'cnn_bn', '--model_folder', '{d}', '--dir_type', 'weight'], ['invalid choice']),
    ('cifar10.main', ['--model', 'cnn_bn', '--lr', '-1', '--save', '{d}'], ['--lr']),
    ('cifar10.main', ['--model', 'cnn_bn', '--resume_model', '{d}/junk.t7', '--save', '{d}'], ['--resume_model']),
    ('cifar10.main', ['--model', 'nosuch', '--save', '{d}'], ['unknown --model']),
    ('cifar10.main', ['--model', 'cnn_bn', '--optimizer', 'adamw', '--save', '{d}'], ['invalid choice']),
]


@pytest.mark.parametrize('module,argv,words', OTHER_SCRIPT_CASES,
                         ids=[f'{c[0]}: {" ".join(c[1][-2:])}' for c in OTHER_SCRIPT_CASES])
def test_other_scripts_bad_input(workdir, capsys, module, argv, words):
    main = importlib.import_module(module).main
    before = snapshot(workdir)
    code, err = call_main(main, [*DIGITS, *fill(argv, workdir)], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(workdir) == before
