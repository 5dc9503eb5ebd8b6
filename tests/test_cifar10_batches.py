"""CIFAR-10 python batches are read by a restricted unpickler: the official format loads, a data
file that would run code is refused before it runs and before anything is written."""
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from losslandscape._testing.fake_cifar10 import write_fake_cifar10
from losslandscape.data import datasets
from losslandscape.models.cifar10.zoo import MODELS
from tests.conftest import run_script


class MakesAFolder:
    """Unpickling this calls os.mkdir(path): what a crafted data_batch_1 could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did at protocol 2 (the official batches): every str is a byte
    string (SHORT_BINSTRING / BINSTRING opcodes), which encoding='latin1' turns back into str."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_byte_string(self, obj):
        data = obj.encode('latin1') if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_byte_string
    dispatch[bytes] = save_byte_string


class Appender:
    """A file-like ``write`` that appends to a bytearray (the pure-Python pickler needs one)."""

    def __init__(self, buffer):
        self.write = buffer.extend


def official_style_batch(n, seed=0):
    """The bytes of a batch in the official files' format: a Python 2 protocol-2 pickle of a dict of
    batch_label, labels, data (uint8 numpy array) and filenames, naming NumPy 1's module."""
    rng = np.random.default_rng(seed)
    batch = {'batch_label': 'training batch 1 of 5', 'labels': rng.integers(0, 10, size=n).tolist(),
             'data': rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             'filenames': [f'image_{i}.png' for i in range(n)]}
    blob = bytearray()
    Python2Pickler(Appender(blob), protocol=2).dump(batch)
    blob = bytes(blob).replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')
    return batch, blob


def test_official_python2_batch_format_loads():
    batch, blob = official_style_batch(3)
    opcodes = {op.name for op, _, _ in pickletools.genops(blob)}
    assert 'BINSTRING' in opcodes and not {'BINUNICODE', 'SHORT_BINUNICODE'} & opcodes  # like Python 2
    assert b'cnumpy.core.multiarray\n_reconstruct\n' in blob
    loaded = datasets.read_cifar10_batch(blob, 'data_batch_1')
    assert loaded['batch_label'] == batch['batch_label'] and loaded['filenames'] == batch['filenames']
    assert loaded['labels'] == batch['labels']
    assert loaded['data'].dtype == np.uint8 and np.array_equal(loaded['data'], batch['data'])


def test_fake_batches_load(tmp_path):
    write_fake_cifar10(str(tmp_path), num_train=10, num_test=2)
    with pytest.warns(UserWarning, match='checksums'):
        data = datasets.load_cifar10(str(tmp_path), train=True)
    assert data.inputs.shape == (10, 3, 32, 32) and data.inputs.dtype == torch.uint8


def test_a_batch_that_would_run_code_is_refused_before_anything_is_written(tmp_path):
    batches = write_fake_cifar10(str(tmp_path / 'data'), num_train=10, num_test=2)
    made_by_the_pickle = tmp_path / 'made_by_unpickling'
    with open(os.path.join(batches, 'data_batch_1'), 'wb') as fh:
        pickle.dump(MakesAFolder(str(made_by_the_pickle)), fh, protocol=2)
    torch.save({'state_dict': MODELS['resnet20']().state_dict()}, tmp_path / 'r20.t7')
    before = sorted(os.listdir(tmp_path))
    run = run_script('plot_surface.py', '--datapath', tmp_path / 'data', '--model', 'resnet20',
                     '--model_file', tmp_path / 'r20.t7', '--x=-1:1:2', '--threads', '1')
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in run.stderr, run.stderr
    assert os.path.join(batches, 'data_batch_1') in lines[0] and 'mkdir' in lines[0], lines[0]
    assert not made_by_the_pickle.exists()
    assert sorted(os.listdir(tmp_path)) == before   # no direction or surface file


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_batches_repickled_by_python3_at_any_protocol_load(protocol):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    blob = pickle.dumps({'batch_label': 'b', 'labels': [3, 7], 'data': data, 'filenames': ['a', 'b']},
                        protocol=protocol)
    batch = datasets.read_cifar10_batch(blob, 'data_batch_1')
    np.testing.assert_array_equal(batch['data'], data)
    assert batch['labels'] == [3, 7]
