"""file_safety.atomic_path, the one atomic replace: the mode of what each writer makes, and failures."""
import os
import stat

import numpy as np
import pytest
import torch

from losslandscape import h52vtp
from losslandscape import train as train_main
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.io.file_safety import atomic_path


@pytest.fixture
def umask_027():
    """Run with umask 0o027 (not the usual 0o022, so neither 0o600 nor a fixed 0o644 passes);
    yield the mode a plain open() then gives."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def write_vtp(path):
    x = y = np.array([0.0, 1.0])
    h52vtp.write_vtp(h52vtp.grid_polydata(x, y, np.zeros((2, 2))), str(path))


def write_hdf5(path):
    hdf5_layout.write_direction_file(str(path), [np.zeros(3, dtype=np.float32)])


def write_checkpoint(path):
    train_main.atomic_save({'state_dict': {'w': torch.zeros(2)}, 'epoch': 0, 'acc': 0.0}, str(path))


@pytest.mark.parametrize('write,name', [(write_vtp, 'surf.vtp'), (write_hdf5, 'dirs.h5'),
                                        (write_checkpoint, 'model_0.t7')], ids=['vtp', 'hdf5', 'checkpoint'])
def test_written_file_has_the_mode_the_umask_gives(tmp_path, umask_027, write, name):
    write(tmp_path / name)
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == umask_027
    assert os.listdir(tmp_path) == [name]   # no temporary left beside it


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    # torch.save fails half-way through (a lambda does not pickle). The same for HDF5 files:
    # tests/test_reliability.py::test_failed_write_leaves_the_old_file.
    path = tmp_path / 'model_0.t7'
    path.write_bytes(b'old contents')
    with pytest.raises(Exception, match='pickle'):
        train_main.atomic_save({'not picklable': lambda: None}, str(path))
    assert path.read_bytes() == b'old contents'
    assert os.listdir(tmp_path) == ['model_0.t7']


def test_a_folder_that_cannot_hold_the_temporary_is_a_usage_error(tmp_path):
    (tmp_path / 'a_file').write_text('')
    target = tmp_path / 'a_file' / 'missing' / 'model.t7'
    with pytest.raises(UsageError, match='cannot make the folder .*model.t7'):
        with atomic_path(str(target)):
            pass
    assert sorted(os.listdir(tmp_path)) == ['a_file']


def test_a_missing_folder_is_made_for_the_file(tmp_path):
    target = tmp_path / 'missing' / 'deeper' / 'model.t7'
    with atomic_path(str(target)) as tmp:
        with open(tmp, 'w') as out:
            out.write('x')
    assert target.read_text() == 'x' and os.listdir(target.parent) == ['model.t7']
