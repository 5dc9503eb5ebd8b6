"""The suite as an installed package: `pip install` of the checkout into a fresh virtual
environment, the scripts through `python -m losslandscape.<script>` from a user's own folder whose
modules are named like the suite's old ones (grid.py, objective.py, errors.py, curves.py), the
Python API from there, and the checkout's compatibility files for code written against the
original."""
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from unittest import mock

import h5py
import numpy as np
import pytest
import torch

import losslandscape
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from tests.conftest import ROOT, run_script

SCRIPTS = ('plot_surface', 'plot_1D', 'plot_2D', 'plot_trajectory', 'plot_hessian_eigen', 'h52vtp',
           'hessian_spectrum', 'sharpness', 'train_curve', 'train')

# The user's folder: every module named like one of the suite's former top-level modules.
USER_FILES = {
    'curves.py': '''
        WIDTH = 6                                   # imported by grid.py: a sibling of the user's own
    ''',
    'grid.py': '''
        import torch
        import curves                               # the user's curves.py, not the suite's old module


        def net():
            torch.manual_seed(0)
            width = curves.WIDTH
            return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    ''',
    'errors.py': '''
        import torch


        def make(root, train=True):
            gen = torch.Generator().manual_seed(1 if train else 2)
            x = torch.randn(40, 3, generator=gen)
            return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())
    ''',
    'objective.py': '''
        def fn(model, batch):
            inputs, target = batch
            error = model(inputs) - target
            return {'loss': (error ** 2).sum(), 'count': error.shape[0]}
    ''',
}
GRID = ('--x=-1:1:3', '--y=-1:1:3')


def load_user_modules(folder):
    """The user's modules, imported by path in this process (to compute the values independently);
    sys.modules is as before afterwards."""
    modules = {}
    for name in ('curves', 'grid', 'errors', 'objective'):
        spec = importlib.util.spec_from_file_location(f'user_{name}', folder / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        with mock.patch.dict(sys.modules, {'curves': modules.get('curves', module)}):   # grid.py imports it
            spec.loader.exec_module(module)
        modules[name] = module
    return modules


def independent_surface(modules, checkpoint, dir_file, xs, ys):
    """Mean squared error at centre + x dx + y dy, by hand: the direction file read with h5py,
    the parameters set with torch, the whole data set in one batch."""
    net = modules['grid'].net()
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    centre = [p.detach().clone() for p in net.parameters()]
    with h5py.File(dir_file, 'r') as f:
        dx = [torch.from_numpy(f['xdirection'][str(i)][()]) for i in range(len(centre))]
        dy = [torch.from_numpy(f['ydirection'][str(i)][()]) for i in range(len(centre))]
    inputs, target = modules['errors'].make('', True).tensors
    values = np.empty((len(ys), len(xs)))
    with torch.no_grad():
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                for p, c, a, b in zip(net.parameters(), centre, dx, dy):
                    p.copy_(c + x * a + y * b)
                values[i, j] = ((net(inputs) - target) ** 2).double().mean().item()
    return values


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(python of a fresh virtual environment holding the package pip installed from a copy of the
    checkout, the wheel's file names). The environment sees this one's dependencies (torch, h5py
    ...) through a .pth file, as plain paths: not this environment's own editable install."""
    tmp = tmp_path_factory.mktemp('install')
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split('\0')
    clone = tmp / 'clone'
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), clone / name)
    wheels = tmp / 'wheels'
    built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                            '-w', str(wheels), str(clone)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.iterdir()
    names = zipfile.ZipFile(wheel).namelist()

    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
    with open(os.path.join(site, 'dependencies.pth'), 'w') as f:
        f.write('\n'.join(sorted(ours)) + '\n')
    done = subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return python, names


def user_env():
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return {**env, 'OMP_NUM_THREADS': '1'}


def test_the_wheel_holds_the_package_alone(installed):
    _, names = installed
    assert all(name.split('/')[0] == 'losslandscape' or '.dist-info/' in name for name in names), names
    for script in SCRIPTS:
        assert f'losslandscape/{script}.py' in names
    for package in ('cli', 'compute', 'curvature', 'curves', 'data', 'directions', 'engine', 'figures', 'io',
                    'models', 'objectives', 'parallel', 'training'):
        assert f'losslandscape/{package}/__init__.py' in names


def test_pip_installed_scripts_run_from_a_users_folder_of_colliding_names(installed, tmp_path):
    python, _ = installed
    user = tmp_path / 'user'
    user.mkdir()
    for name, text in USER_FILES.items():
        (user / name).write_text(textwrap.dedent(text))
    modules = load_user_modules(user)
    torch.save(modules['grid'].net().state_dict(), user / 'm.t7')
    where = subprocess.run([python, '-c', 'import losslandscape; print(losslandscape.__file__)'], cwd=user,
                           env=user_env(), capture_output=True, text=True, check=True).stdout.strip()
    venv = os.path.dirname(os.path.dirname(python))
    assert where.startswith(venv + os.sep), where   # the installed copy, not the checkout

    flags = ['--model', 'grid:net', '--dataset', 'errors:make', '--loss_name', 'objective:fn', '--model_file', 'm.t7',
             *GRID, '--xnorm', 'filter', '--ynorm', 'filter', '--surf_file', 'surface.h5', '--threads', '1']
    done = subprocess.run([python, '-m', 'losslandscape.plot_surface', *flags], cwd=user, env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    surface = hdf5_layout.read_surface(str(user / 'surface.h5'))
    dir_file = str(user / surface.dir_file) if not os.path.isabs(surface.dir_file) else surface.dir_file
    expected = independent_surface(modules, user / 'm.t7', dir_file, surface.xcoordinates, surface.ycoordinates)
    np.testing.assert_allclose(surface.values['train_loss'], expected, rtol=1e-5)
    for path in (user / 'surface.h5', dir_file):
        with h5py.File(path, 'r') as f:
            assert f.attrs[hdf5_layout.SUITE_VERSION_ATTR] == f'"{losslandscape.__version__}"'

    # The Python API from the same folder, where `import errors` is the user's.
    api = f'''
import errors, grid, objective, torch
import losslandscape
net = grid.net()
net.load_state_dict(torch.load('m.t7', weights_only=True))
s = losslandscape.surface(net, errors.make('', True), x='-1:1:3', y='-1:1:3', loss_name=objective.fn,
                          dir_file={dir_file!r}, surf_file='api.h5', threads=1)
print(repr(s.values['train_loss'].tolist()))
'''
    done = subprocess.run([python, '-c', api], cwd=user, env=user_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.array(eval(done.stdout.strip().splitlines()[-1])), expected, rtol=1e-5)


def test_the_console_commands_run_the_scripts(installed, tmp_path):
    python, _ = installed
    command = os.path.join(os.path.dirname(python), 'losslandscape-plot-surface')
    done = subprocess.run([command, '--help'], cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith('usage: plot_surface.py'), done.stderr
    done = subprocess.run([command, '--x=nonsense'], cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_script_has_help_through_python_m(script, tmp_path):
    done = subprocess.run([sys.executable, '-m', f'losslandscape.{script}', '--help'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage:') and '--help' in done.stdout


@pytest.mark.parametrize('script', ['plot_surface', 'plot_1D', 'plot_2D', 'plot_trajectory', 'plot_hessian_eigen',
                                    'h52vtp', 'cifar10/main'])
def test_the_checkouts_scripts_are_the_packages(script):
    """`python plot_surface.py` in the checkout is `python -m losslandscape.plot_surface`."""
    module = 'train' if script == 'cifar10/main' else script
    top = run_script(f'{script}.py', '--help')
    package = subprocess.run([sys.executable, '-m', f'losslandscape.{module}', '--help'], capture_output=True,
                             text=True, timeout=120)
    assert top.returncode == package.returncode == 0, top.stderr + package.stderr
    assert top.stdout == package.stdout


def test_a_bad_flag_through_python_m_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, '-m', 'losslandscape.plot_surface', '--model', 'grid:net',
                           '--x=nonsense'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'Traceback' not in done.stderr and os.listdir(tmp_path) == []


def test_the_original_codes_helper_modules_import_from_the_checkout(checkpoints):
    import dataloader
    import evaluation
    import model_loader
    import net_plotter
    import projection
    import scheduler
    net = model_loader.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    same = loading.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
    weights = net_plotter.get_weights(net)
    assert [tuple(w.shape) for w in weights] == [tuple(p.shape) for p in net.parameters()]
    assert scheduler.assign_points(range(7), 1, 3).tolist() == [1, 4]
    data = dataloader.load_dataset('digits', '', train=False)
    loss, acc = evaluation.evaluate(net, data)
    assert 0 < loss < 10 and 0 <= acc <= 100
    assert callable(projection.setup_PCA_directions) and callable(net_plotter.name_direction_file)


def test_the_repository_root_holds_only_the_original_codes_python_files():
    top = sorted(name for name in os.listdir(ROOT) if name.endswith('.py'))
    assert top == sorted(['plot_surface.py', 'plot_1D.py', 'plot_2D.py', 'plot_trajectory.py', 'plot_hessian_eigen.py',
                          'h52vtp.py', 'net_plotter.py', 'projection.py', 'scheduler.py', 'evaluation.py',
                          'dataloader.py', 'model_loader.py'])


def test_no_code_edits_sys_path():
    """The package, the checkout's compatibility files, the benchmarks and the examples import
    through the installed package, never by changing sys.path."""
    paths = [name for name in os.listdir(ROOT) if name.endswith('.py')]
    for folder in ('losslandscape', 'benchmarks', 'examples', 'cifar10'):
        paths += [os.path.join(base, name) for base, _, files in os.walk(os.path.join(ROOT, folder))
                  for name in files if name.endswith(('.py', '.sh'))]
    offenders = [path for path in paths
                 if any(edit in open(os.path.join(ROOT, path)).read() for edit in ('sys.path.insert', 'sys.path.append',
                                                                                     'sys.path['))]
    assert offenders == []


def test_every_file_kind_records_the_suite_version(tmp_path):
    arrays = [np.ones((2, 3), np.float32)]
    writers = {
        'direction': lambda p: hdf5_layout.write_direction_file(p, arrays, arrays),
        'surface': lambda p: hdf5_layout.write_surface_file(p, 'd.h5', [0.0, 1.0], None,
                                                            {hdf5_layout.TRAIN_LOSS: np.zeros(2)},
                                                            {hdf5_layout.TRAIN_LOSS: np.zeros(2, bool)}, {}),
        'projection': lambda p: hdf5_layout.write_projection_file(p, [0.0], [0.0]),
        'spectrum': lambda p: hdf5_layout.write_spectrum_file(p, {hdf5_layout.EIGENVALUES: [1.0]}, {}),
        'curve': lambda p: hdf5_layout.write_curve_file(p, [{'w': arrays[0]}], None, {}, {}),
        'sharpness': lambda p: hdf5_layout.write_sharpness_file(p, {hdf5_layout.SHARPNESS_NAMES[0]: [0.1]}, {}),
    }
    for kind, write in writers.items():
        path = str(tmp_path / f'{kind}.h5')
        write(path)
        with h5py.File(path, 'r') as f:
            assert f.attrs[hdf5_layout.SUITE_VERSION_ATTR] == f'"{losslandscape.__version__}"', kind
