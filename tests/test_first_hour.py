"""The first hour with one's own model: factory arguments, an untrained model under a seed, output
folders made when missing, the Python API taking Python values and speaking in keywords, clear
errors for checkpoints and models that cannot be used, and threads that respect the machine."""
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import losslandscape
from losslandscape import hessian_spectrum, plot_surface
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.parallel import mpi_comm
from tests.conftest import assert_one_line_error, call_main, run_script, snapshot
from tests.fixtures import custom

CUSTOM = 'tests.fixtures.custom'
DATA = ['--dataset', f'{CUSTOM}:three_class_data', '--threads', '1']
GRID = ['--x=-1:1:3', '--xnorm', 'filter']


def surface_values(path, name='train_loss'):
    return hdf5_layout.read_surface(str(path)).values[name]


def run_ok(capsys, *argv, main=plot_surface.main):
    code, err = call_main(main, [str(a) for a in argv], capsys)
    assert code == 0, err
    return err


def save_model(path, net):
    torch.save({'state_dict': net.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- factory arguments

@pytest.mark.parametrize('flag,with_arguments,wrapper', [
    ('--model', f'{CUSTOM}:sized_model(hidden=16)', f'{CUSTOM}:sized_model_16'),
    ('--dataset', f'{CUSTOM}:sized_data(n=30)', f'{CUSTOM}:sized_data_30'),
    ('--loss_name', f'{CUSTOM}:scaled_loss(scale=2.0)', f'{CUSTOM}:scaled_loss_2'),
], ids=['model', 'dataset', 'loss'])
def test_factory_arguments_give_the_wrapper_functions_values(tmp_path, capsys, flag, with_arguments, wrapper):
    torch.manual_seed(0)
    model = save_model(tmp_path / 'm.t7', custom.sized_model(hidden=16))
    common = {'--model': f'{CUSTOM}:sized_model_16', '--dataset': f'{CUSTOM}:three_class_data',
              '--loss_name': 'crossentropy'}
    values = {}
    for name, spec in (('args', with_arguments), ('wrapper', wrapper)):
        flags = {**common, flag: spec}
        argv = [a for pair in flags.items() for a in pair]
        run_ok(capsys, *argv, '--model_file', model, *GRID, '--threads', '1', '--surf_file', tmp_path / f'{name}.h5',
               '--dir_file', tmp_path / 'dirs.h5' if name == 'wrapper' else '')
        values[name] = surface_values(tmp_path / f'{name}.h5')
        if name == 'args':
            shutil.copy(next(p for p in tmp_path.iterdir() if p.name.startswith('m.t7_')), tmp_path / 'dirs.h5')
    np.testing.assert_array_equal(values['args'], values['wrapper'])
    # The files record the factory and its arguments, written one way.
    attrs = hdf5_layout.read_surface(str(tmp_path / 'args.h5')).attrs
    assert flag.strip('-') in attrs and with_arguments.replace(' ', '') in attrs[flag.strip('-')]


def test_factory_arguments_are_part_of_the_identity_however_written(tmp_path, capsys):
    torch.manual_seed(0)
    model = save_model(tmp_path / 'm.t7', custom.sized_model(hidden=16, classes=3))
    argv = [*DATA, '--model_file', model, *GRID, '--surf_file', tmp_path / 's.h5']
    run_ok(capsys, '--model', f'{CUSTOM}:sized_model(hidden=16, classes=3)', *argv)
    # The same factory and arguments, spaced and ordered otherwise: the same run, resumed.
    run_ok(capsys, '--model', f'{CUSTOM}:sized_model( classes=3,hidden=16 )', *argv)
    code, err = call_main(plot_surface.main, ['--model', f'{CUSTOM}:sized_model(hidden=16, classes=3, dropout=0.5)',
                                              *map(str, argv)], capsys)
    assert_one_line_error(code, err, ['was made with model='])


BAD_FACTORIES = [
    (['--model', f'{CUSTOM}:model_needing_depth'], ['--model', 'model_needing_depth', 'cannot be called as given',
                                                    'depth']),
    (['--model', f'{CUSTOM}:sized_model(width=3)'], ['--model', 'cannot be called as given', 'width']),
    (['--model', f'{CUSTOM}:failing_model(hidden=5)'], ['--model', 'raised ValueError', 'no model has 5 hidden']),
    (['--model', f'{CUSTOM}:sized_model(hidden=__import__("os").getpid())'], ['--model', 'not a Python literal']),
    (['--model', f'{CUSTOM}:sized_model(16)'], ['--model', 'keyword arguments only']),
    (['--model', f'{CUSTOM}:sized_model(hidden=16'], ['--model', 'not valid Python syntax']),
    (['--model', f'{CUSTOM}:meta_model'], ['--model', 'meta device']),
    (['--dataset', f'{CUSTOM}:sized_data(m=3)'], ['--dataset', 'cannot be called as given']),
    (['--dataset', f'{CUSTOM}:data_without_arguments', '--eval_test'], ['--dataset', 'no test split']),
    (['--loss_name', f'{CUSTOM}:scaled_loss(factor=2)'], ['--loss_name', 'cannot be called as given', 'factor']),
    (['--loss_name', f'{CUSTOM}:model_needing_depth'], ['--loss_name', 'cannot be called as fn(model, batch)']),
]


@pytest.mark.parametrize('flags,words', BAD_FACTORIES, ids=[' '.join(f[1:]) for f, _ in BAD_FACTORIES])
def test_a_factory_that_cannot_be_called_as_given_is_one_line(tmp_path, capsys, flags, words):
    save_model(tmp_path / 'm.t7', custom.three_class_model())
    base = {'--model': f'{CUSTOM}:three_class_model', '--dataset': f'{CUSTOM}:three_class_data'}
    base.update({flags[0]: flags[1]})
    argv = [a for pair in base.items() for a in pair] + flags[2:]
    model_file = [] if 'model' in flags[0] else ['--model_file', tmp_path / 'm.t7']
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [*argv, *map(str, model_file), *GRID, '--threads', '1',
                                              '--surf_file', str(tmp_path / 's.h5')], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_a_dataset_factory_without_root_or_train_is_called_without_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no --model_file: the direction file is named in the working folder
    run_ok(capsys, '--dataset', f'{CUSTOM}:data_without_arguments', '--model', f'{CUSTOM}:three_class_model',
           *GRID, '--threads', '1', '--surf_file', tmp_path / 's.h5')
    assert np.isfinite(surface_values(tmp_path / 's.h5')).all()


# ----------------------------------------------------------------------------- an untrained model

def test_without_model_file_the_model_is_initialised_under_the_seed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ['--model', f'{CUSTOM}:three_class_model', *DATA, *GRID]
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        run_ok(capsys, *argv, '--rand_seed', seed, '--surf_file', f'{name}.h5')
    a, b, c = (surface_values(tmp_path / f'{n}.h5') for n in 'abc')
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # The centre is the factory's model under that seed, evaluated plainly.
    torch.manual_seed(3)
    net = custom.three_class_model().eval()
    data = custom.three_class_data(None, train=True)
    x, y = torch.stack([data[i][0] for i in range(len(data))]), torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        centre = torch.nn.functional.cross_entropy(net(x), y).item()
    np.testing.assert_allclose(a[1], centre, rtol=1e-5)
    # The seed is recorded, and a run under another seed cannot resume the file.
    assert hdf5_layout.decoded_attrs(hdf5_layout.read_surface(str(tmp_path / 'a.h5')).attrs)['init_seed'] == 3
    code, err = call_main(plot_surface.main, [*argv, '--rand_seed', '5', '--surf_file', 'a.h5'], capsys)
    assert_one_line_error(code, err, ['init_seed=3'])
    # Its direction file is named after the model and the seed, in the working folder.
    assert any(p.name.startswith('tests.fixtures.custom_three_class_model_init_seed=3_weights') for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- output folders

def test_missing_output_folders_are_made(tmp_path, capsys, checkpoints):
    model = shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    run_ok(capsys, '--dataset', 'digits', '--model', 'mlp', '--model_file', model, *GRID, '--threads', '1',
           '--surf_file', tmp_path / 'out' / 'deeper' / 's.h5', '--dir_file', '')
    assert (tmp_path / 'out' / 'deeper' / 's.h5').is_file()
    losslandscape.figures.loss_curve(str(tmp_path / 'out' / 'deeper' / 's.h5'), save=str(tmp_path / 'figs' / 'curve'))
    assert sorted(p.name for p in (tmp_path / 'figs').iterdir()) == ['curve.pdf', 'curve.png']
    run_ok(capsys, '--dataset', 'digits', '--model', 'mlp', '--model_file', model, '--threads', '1', '--top_k', '1',
           '--spectrum_file', tmp_path / 'spectra' / 'a.h5', '--data_split', '10', main=hessian_spectrum.main)
    assert (tmp_path / 'spectra' / 'a.h5').is_file()


# ----------------------------------------------------------------------------- the Python API

@pytest.fixture
def api_case(tmp_path):
    torch.manual_seed(0)
    return custom.three_class_model(), custom.three_class_data(None, train=True), tmp_path


def test_api_takes_python_values_for_axes_and_patterns(api_case):
    model, data, folder = api_case
    as_text = losslandscape.surface(model, data, x='-1:1:3', include_params='1.*,3.weight', xnorm='filter',
                                    surf_file=str(folder / 'text.h5'), threads=1)
    as_python = losslandscape.surface(model, data, x=(-1, 1, 3), include_params=['1.*', '3.weight'], xnorm='filter',
                                      surf_file=str(folder / 'python.h5'), threads=1)
    np.testing.assert_array_equal(as_python.values['train_loss'], as_text.values['train_loss'])
    np.testing.assert_array_equal(as_python.xcoordinates, [-1.0, 0.0, 1.0])
    with pytest.raises(UsageError, match=r'x=\(-1, 1\): expected \(MIN, MAX, NUM\)'):
        losslandscape.surface(model, data, x=(-1, 1), surf_file=str(folder / 'bad.h5'))
    with pytest.raises(UsageError, match='include_params='):
        losslandscape.surface(model, data, include_params=['a,b'], surf_file=str(folder / 'bad.h5'))


def test_api_errors_name_the_keyword_as_written(api_case):
    model, data, folder = api_case
    (folder / 'a_file').write_text('')
    with pytest.raises(UsageError) as err:
        losslandscape.surface(model, data, x='-1:1:3', surf_file=str(folder / 'a_file' / 's.h5'))
    assert 'surf_file=' in str(err.value) and '--surf_file' not in str(err.value)
    with pytest.raises(UsageError) as err:
        losslandscape.surface(model, data, x='1:-1:3', surf_file=str(folder / 's.h5'))
    assert "x='1:-1:3'" in str(err.value) and '--x' not in str(err.value)


def test_api_makes_the_output_folder_as_in_the_readme(api_case, monkeypatch):
    model, data, folder = api_case
    monkeypatch.chdir(folder)
    surface = losslandscape.surface(model, data, x=(-1, 1, 3), surf_file='out/surface.h5', threads=1)
    assert (folder / 'out' / 'surface.h5').is_file() and np.isfinite(surface.values['train_loss']).all()


def test_api_model_file_is_the_centre(api_case):
    model, data, folder = api_case
    torch.manual_seed(7)
    trained = custom.three_class_model()
    save_model(folder / 'trained.t7', trained)
    from_file = losslandscape.surface(model, data, x='0:0:1', model_file=str(folder / 'trained.t7'),
                                      surf_file=str(folder / 'f.h5'), threads=1)
    direct = losslandscape.surface(trained, data, x='0:0:1', surf_file=str(folder / 'd.h5'), threads=1)
    np.testing.assert_array_equal(from_file.values['train_loss'], direct.values['train_loss'])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    torch.save(trained, folder / 'whole.pt')
    with pytest.raises(UsageError, match="model_file='.*whole.pt' holds a pickled .*Sequential object, not a state_dict"):
        losslandscape.surface(model, data, model_file=str(folder / 'whole.pt'), surf_file=str(folder / 'w.h5'))


class NotebookNet(torch.nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = custom.sized_model(hidden=hidden)

    def forward(self, x):
        return self.body(x)


def test_a_surface_of_a_notebook_class_resumes_once_the_class_lives_in_a_module(api_case):
    _, data, folder = api_case
    # The same class as a notebook defines it (in __main__), and later imported from a module.
    in_notebook = type('NotebookNet', (NotebookNet,), {'__module__': '__main__'})
    torch.manual_seed(0)
    first = in_notebook()
    flags = dict(x='-1:1:3', xnorm='filter', surf_file=str(folder / 's.h5'), threads=1)
    done = losslandscape.surface(first, data, **{**flags, 'x': '-1:1:3'})
    assert 'python:__main__.NotebookNet' in hdf5_layout.decoded_attrs(done.attrs)['model']
    moved = NotebookNet()
    moved.load_state_dict(first.state_dict())
    again = losslandscape.surface(moved, data, **flags)
    np.testing.assert_array_equal(again.values['train_loss'], done.values['train_loss'])
    with pytest.raises(UsageError, match='was made with model='):
        losslandscape.surface(NotebookNet(hidden=5), data, **flags)


# ----------------------------------------------------------------------------- checkpoints and models

def test_a_whole_model_checkpoint_says_to_save_the_state_dict(tmp_path, capsys):
    torch.save(custom.three_class_model(), tmp_path / 'whole.pt')
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, ['--model', f'{CUSTOM}:three_class_model', *DATA, *GRID,
                                              '--model_file', str(tmp_path / 'whole.pt')], capsys)
    assert_one_line_error(code, err, ['--model_file', 'pickled torch.nn.modules.container.Sequential object',
                                      'torch.save(model.state_dict(), path)'])
    assert '\x1b[' not in err and snapshot(tmp_path) == before


def test_a_model_on_the_meta_device_is_refused_in_the_api(api_case):
    _, data, folder = api_case
    with pytest.raises(UsageError, match='model= has tensors on the meta device'):
        losslandscape.surface(custom.meta_model(), data, surf_file=str(folder / 's.h5'))
    assert not any(folder.iterdir())


# ----------------------------------------------------------------------------- threads

def test_threads_follow_omp_num_threads_and_the_affinity_mask(monkeypatch):
    comm = mpi_comm.SerialComm()
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert mpi_comm.threads_for(None, comm) == (1, 'OMP_NUM_THREADS=1')
    assert mpi_comm.threads_for(3, comm) == (3, '--threads')
    monkeypatch.delenv('OMP_NUM_THREADS')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {5})
    assert mpi_comm.threads_for(None, comm) == (1, 'the 1 core this process may use')


def compute_line(output):
    return next(line for line in output.splitlines() if line.startswith('compute:'))


@pytest.mark.skipif(not shutil.which('taskset'), reason='taskset (util-linux) is not installed')
@pytest.mark.parametrize('how', ['OMP_NUM_THREADS=1', 'taskset -c 0'])
def test_a_run_takes_one_thread_where_it_may_use_one(tmp_path, checkpoints, how):
    model = shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    env = {'OMP_NUM_THREADS': '1'} if how.startswith('OMP') else {'OMP_NUM_THREADS': ''}
    launcher = ('taskset', '-c', '0') if how.startswith('taskset') else ()
    run = run_script('plot_surface.py', '--dataset', 'digits', '--model', 'mlp', '--model_file', model, *GRID,
                     '--surf_file', tmp_path / 's.h5', env=env, launcher=launcher)
    assert run.returncode == 0, run.stderr
    line = compute_line(run.stdout)
    assert line.endswith('; 1 thread (OMP_NUM_THREADS=1)' if how.startswith('OMP') else
                         '; 1 thread (the 1 core this process may use)'), line
    assert line.startswith('compute: batch 128 (the run, about')   # and why the batch size is what it is


@pytest.mark.skipif(len(mpi_comm.usable_cores()) != 2, reason='the two-rank case is for a two-core machine')
def test_two_mpi_ranks_on_two_cores_take_one_thread_each(tmp_path, checkpoints):
    from tests.test_mpi import MPIEXEC
    model = shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    run = run_script('plot_surface.py', '--mpi', '--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                     *GRID, '--surf_file', tmp_path / 's.h5', env={'OMP_NUM_THREADS': ''}, launcher=(MPIEXEC, '-n', '2'))
    assert run.returncode == 0, run.stderr
    assert compute_line(run.stdout).endswith('; 1 thread (the 2 cores this process may use, shared by 2 MPI ranks '
                                             'on this node)'), run.stdout
    with h5py.File(tmp_path / 's.h5') as f:
        assert np.isfinite(f['train_loss'][()]).all()


class _TensorOn:
    """What check_model_tensors reads of a tensor, on a device this machine may not have."""

    def __init__(self, device):
        self.device, self.is_meta = torch.device(device), False


class _ModelOn(torch.nn.Module):
    def __init__(self, device):
        super().__init__()
        self.on = _TensorOn(device)

    def named_parameters(self, *args, **kwargs):
        return iter([('layer.weight', self.on)])

    def named_buffers(self, *args, **kwargs):
        return iter([])


def test_a_model_on_another_device_than_the_runs_is_refused():
    from losslandscape.models import loading
    with pytest.raises(UsageError, match=r"model= has tensors on cuda:0 \('layer.weight'\), but the run computes on "
                                         r"cpu: pass --cuda"):
        loading.check_model_tensors(_ModelOn('cuda:0'), 'cpu', 'model=')
    with pytest.raises(UsageError, match='on cuda:1 .* computes on cuda:0: move the model to it'):
        loading.check_model_tensors(_ModelOn('cuda:1'), 'cuda:0', 'model=')
    loading.check_model_tensors(_ModelOn('cuda:0'), 'cuda:0', 'model=')    # the run's own device
    loading.check_model_tensors(_ModelOn('cpu'), 'cuda:0', 'model=')       # moved there by the run
