"""--model / --dataset package.module:factory with the package in the user's working folder.

`python script.py` puts the script's folder on sys.path, not the working folder, so these run the
scripts as a user would, from a temporary working folder that holds a tiny package of its own.
"""
import glob
import os
import sys
import textwrap
import uuid

import pytest
import torch

from losslandscape.data import user_code
from losslandscape.errors import UsageError
from tests.conftest import run_script

MODELS_PY = '''
import torch


def build():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
'''
DATA_PY = '''
import torch


def make(root, train=True):
    gen = torch.Generator().manual_seed(0 if train else 1)
    x = torch.randn(48 if train else 16, 4, generator=gen)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
'''


def write_package(folder, name):
    package = folder / name
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'models.py').write_text(textwrap.dedent(MODELS_PY))
    (package / 'data.py').write_text(textwrap.dedent(DATA_PY))


@pytest.fixture
def workdir(tmp_path):
    """A working folder holding the user's package 'mypkg' (and nothing on sys.path points at it)
    and model.t7, a checkpoint of mypkg.models:build."""
    write_package(tmp_path, 'mypkg')
    namespace = {}
    exec(textwrap.dedent(MODELS_PY), namespace)
    torch.save(namespace['build']().state_dict(), tmp_path / 'model.t7')
    return tmp_path


def test_package_in_the_working_folder_trains_and_plots(workdir):
    factories = ['--dataset', 'mypkg.data:make', '--model', 'mypkg.models:build', '--threads', '1']
    trained = run_script('cifar10/main.py', *factories, '--epochs', '1', '--batch_size', '16',
                         '--save', 'nets', cwd=workdir)
    assert trained.returncode == 0, trained.stderr
    [checkpoint] = glob.glob(str(workdir / 'nets' / '*' / 'model_1.t7'))

    surface = run_script('plot_surface.py', *factories, '--model_file', checkpoint, '--x=-1:1:3',
                         '--surf_file', 'surface.h5', cwd=workdir)
    assert surface.returncode == 0, surface.stderr
    assert (workdir / 'surface.h5').is_file()


@pytest.mark.parametrize('script, extra', [
    ('cifar10/main.py', ['--epochs', '1', '--save', 'nets']),
    ('plot_surface.py', ['--model_file', 'model.t7', '--x=-1:1:3']),
])
@pytest.mark.parametrize('flag, spec', [('--model', 'nosuchpkg.models:build'),
                                        ('--dataset', 'nosuchpkg.data:make')])
def test_a_missing_package_is_a_one_line_error(workdir, script, extra, flag, spec):
    factories = {'--dataset': 'mypkg.data:make', '--model': 'mypkg.models:build', flag: spec}
    before = sorted(os.listdir(workdir))
    result = run_script(script, *[a for item in factories.items() for a in item], *extra, cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr
    assert f"{flag} '{spec}': cannot import 'nosuchpkg" in lines[0]
    assert sorted(os.listdir(workdir)) == before


@pytest.fixture
def unique_package(tmp_path, monkeypatch):
    """A package only the working folder holds, imported in this process; sys.path and sys.modules
    are restored afterwards."""
    name = f'cwdpkg_{uuid.uuid4().hex}'
    write_package(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if p not in ('', '.', str(tmp_path))])
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + '.')]:
        del sys.modules[module]


def test_the_working_folder_is_searched_first_and_sys_path_never_changes(unique_package, tmp_path):
    before = list(sys.path)
    factory = user_code.import_factory(f'{unique_package}.models:build', '--model')
    assert factory.__module__ == f'{unique_package}.models'
    assert os.path.dirname(sys.modules[unique_package].__file__) == os.path.realpath(tmp_path / unique_package)
    user_code.import_factory(f'{unique_package}.data:make', '--dataset')
    assert sys.path == before
    assert sum(isinstance(f, user_code.WorkingFolderFinder) and f.folder == os.path.realpath(tmp_path)
               for f in sys.meta_path) == 1   # the siblings' finder, added once


def test_a_failed_import_is_a_usage_error_and_leaves_sys_path_alone(unique_package):
    before = list(sys.path)
    with pytest.raises(UsageError, match="cannot import 'nosuchpkg' .*in the working folder .* or on sys.path"):
        user_code.import_factory('nosuchpkg:make', '--dataset')
    assert sys.path == before
