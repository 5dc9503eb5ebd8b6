"""Datasets, read and preprocessed once into tensors that stay on the evaluation device.

Built in: ``cifar10`` (the standard cifar-10-batches-py folder, read offline; downloaded only with
--download) and ``digits`` (scikit-learn's bundled 8x8 digits: real data, no download). Custom:
``--dataset package.module:factory`` where ``factory(root=DATAPATH, train=BOOL)`` returns a torch
Dataset of (input tensor, integer label) pairs.

Images are kept in their stored form (uint8 for the built-in sets: the 50,000 CIFAR-10 training
images take 150 MB) and normalised one batch at a time on the device, so a grid point costs one
forward pass and a cheap affine map -- never a decode or a DataLoader.
"""
import codecs
import dataclasses
import hashlib
import io
import os
import pickle
import warnings

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
    from numpy._core.numeric import _frombuffer as _numpy_frombuffer
except ImportError:   # NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct
    from numpy.core.numeric import _frombuffer as _numpy_frombuffer

from losslandscape.cli.parsing import check_file_exists
from losslandscape.data import user_code
from losslandscape.errors import UsageError

BUILTIN_DATASETS = ('cifar10', 'digits')
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR10_FOLDER = 'cifar-10-batches-py'
# MD5 sums of the official CIFAR-10 python batches: a mismatch is reported, not fatal, so small
# test folders and repacked copies still load.
CIFAR10_BATCHES = {
    'train': [('data_batch_1', 'c99cafc152244af753f735de768cd75f'),
              ('data_batch_2', 'd4bba439e000b95fd0a9bffe97cbabec'),
              ('data_batch_3', '54ebc095f3ab1f0389bbae665268c751'),
              ('data_batch_4', '634d18415352ddfa80567beed471001a'),
              ('data_batch_5', '482c414d41f54cd18b22e5b47cb7c3cb')],
    'test': [('test_batch', '40351d587109b95175f43aff81a1287e')],
}
DIGITS_TEST_FRACTION = 0.2
TRAIN_LABELS_FILE = 'train_labels.pt'   # written by cifar10.main --label_corrupt_prob
SPLIT_SEED = 0   # fixes the --data_split subsets and the digits train/test split for good


@dataclasses.dataclass
class CachedDataset:
    """Inputs and integer targets resident on one device.

    Batches are ``inputs.float() * scale + shift`` (per channel) when ``scale`` is set, else the
    stored inputs as they are."""
    inputs: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    scale: torch.Tensor = None
    shift: torch.Tensor = None

    def __len__(self):
        return self.targets.shape[0]

    @property
    def device(self):
        return self.targets.device

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)
        return CachedDataset(move(self.inputs), move(self.targets), self.num_classes,
                             move(self.scale), move(self.shift))

    def normalize(self, raw):
        return _normalized(raw, self.scale, self.shift)

    def batches(self, batch_size, device=None):
        """(normalised inputs, targets) batches. ``device``: another device than the data's, to
        which each batch is moved (stored form, uint8 for the built-in sets) before it is
        normalised there -- streaming from host memory."""
        moving = device is not None and torch.device(device) != self.device
        scale, shift = self.scale, self.shift
        if moving:
            scale, shift = (None if t is None else t.to(device) for t in (scale, shift))
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            raw, targets = self.inputs[start:stop], self.targets[start:stop]
            if moving:
                raw, targets = raw.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            yield _normalized(raw, scale, shift), targets

    def channels_last(self):
        """The same data with 4-D inputs stored NHWC (normalised batches keep that layout)."""
        if self.inputs.dim() != 4:
            return self
        return dataclasses.replace(self, inputs=self.inputs.contiguous(memory_format=torch.channels_last))

    def subset(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.inputs.device)
        return CachedDataset(self.inputs[idx], self.targets[idx], self.num_classes, self.scale, self.shift)


def _normalized(raw, scale, shift):
    x = raw.float()
    return x if scale is None else torch.addcmul(shift, x, scale)


def add_data_arguments(group):
    """The flags that say which data set to read and how (one declaration for every script)."""
    group.add_argument('--dataset', default='cifar10', help='cifar10, digits (bundled with scikit-learn, no '
                       'download), or package.module:factory with factory(root=..., train=...) -> Dataset; '
                       'also picks the model zoo')
    group.add_argument('--datapath', default='cifar10/data', help='folder of the data set '
                       '(for cifar10: the folder holding cifar-10-batches-py/)')
    group.add_argument('--download', action='store_true', help='download CIFAR-10 into --datapath if missing')
    group.add_argument('--raw_data', action='store_true', help='no mean/std normalization of the inputs')


def _affine(mean, std, raw_max, raw_data):
    """Per-channel (scale, shift) mapping stored values in [0, raw_max] to the network's input:
    (x / raw_max - mean) / std, or x / raw_max with ``raw_data``."""
    mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if raw_data:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    scale = 1.0 / (raw_max * std)
    shift = -mean / std
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


def cifar10_folder(datapath):
    """The folder holding the batches: DATAPATH/cifar-10-batches-py, or DATAPATH itself."""
    nested = os.path.join(datapath, CIFAR10_FOLDER)
    return nested if os.path.isdir(nested) else datapath


# Every global a CIFAR-10 python batch may name, and what it stands for: the batch is a dict of
# str, int and lists, plus one uint8 numpy array, which a pickle rebuilds through numpy's array
# reconstruction (named numpy.core.multiarray by NumPy 1 and the official Python 2 files,
# numpy._core.multiarray by NumPy 2), ndarray and dtype; a pickle made by Python 3 at protocol 2
# stores bytes as _codecs.encode(str, 'latin1'). A pickle can call any global it names, so a batch
# naming anything else is refused before it is called.
CIFAR10_BATCH_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): codecs.encode,
    # Protocol 5 (Python 3.8+'s highest) stores arrays as raw buffers rebuilt by _frombuffer.
    ('numpy.core.numeric', '_frombuffer'): _numpy_frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _numpy_frombuffer,
}


class CIFAR10BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 python batch, admitting only the globals of CIFAR10_BATCH_GLOBALS: a
    crafted data file cannot run code. ``path`` names the file in the refusal."""

    def __init__(self, file, path):
        # latin1 reads the official (Python 2) pickles with str keys, like torchvision does.
        super().__init__(file, encoding='latin1')
        self.path = path

    def find_class(self, module, name):
        try:
            return CIFAR10_BATCH_GLOBALS[(module, name)]
        except KeyError:
            raise UsageError(f'{self.path!r} is not a CIFAR-10 python batch: it references {module}.{name}, '
                             'which a data file never needs') from None


def read_cifar10_batch(blob, path):
    """The object pickled in ``blob`` (the bytes of the batch file ``path``), read by
    CIFAR10BatchUnpickler."""
    return CIFAR10BatchUnpickler(io.BytesIO(blob), path).load()


def load_cifar10(datapath, train=True, raw_data=False, download=False):
    if download:
        try:
            import torchvision  # only needed to fetch the official archive
        except ImportError:
            raise UsageError("--download needs torchvision: pip install 'losslandscape[vision]' "
                             '(or torchvision)') from None
        torchvision.datasets.CIFAR10(root=datapath, train=train, download=True)
    folder = cifar10_folder(datapath)
    images, labels, unofficial = [], [], []
    for name, md5 in CIFAR10_BATCHES['train' if train else 'test']:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise UsageError(f'CIFAR-10 batch {path!r} not found: point --datapath at the folder holding '
                             f'{CIFAR10_FOLDER}/ (or add --download to fetch it)')
        with open(path, 'rb') as fh:
            blob = fh.read()
        if hashlib.md5(blob).hexdigest() != md5:
            unofficial.append(name)
        try:
            batch = read_cifar10_batch(blob, path)
            data, batch_labels = batch['data'], batch['labels']
        except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as err:
            raise UsageError(f'{path!r} is not a CIFAR-10 python batch ({err})') from None
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    if unofficial:
        warnings.warn(f'{folder}: {", ".join(unofficial)} differ from the official CIFAR-10 checksums; using them anyway',
                      stacklevel=2)
    inputs = torch.from_numpy(np.concatenate(images))
    scale, shift = _affine(CIFAR10_MEAN, CIFAR10_STD, 255.0, raw_data)
    return CachedDataset(inputs, torch.from_numpy(np.concatenate(labels)), 10, scale, shift)


def load_digits(train=True, raw_data=False):
    """scikit-learn's 1,797 8x8 digit images (values 0..16), split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits
    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[:, None]       # (N, 1, 8, 8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = int(round(len(images) * DIGITS_TEST_FRACTION))
    chosen = order[n_test:] if train else order[:n_test]
    # Mean/std of the whole set on the [0, 1] scale, fixed so every split normalises alike.
    scale, shift = _affine((0.3053,), (0.3760,), 16.0, raw_data)
    return CachedDataset(torch.from_numpy(images[chosen]), torch.from_numpy(bunch.target[chosen].astype(np.int64)),
                         10, scale, shift)


def make_custom_dataset(spec, datapath, train, what='--dataset'):
    """The torch Dataset of the factory ``spec`` names: called with root= and train= where it
    takes them. One that takes no train= has no test split to give."""
    factory = user_code.import_factory(spec, what)
    if not train and not user_code.takes_keyword(factory, 'train'):
        raise UsageError(f'{what} {spec!r} takes no train= argument, so it has no test split: give it one '
                         '(train=False: the test split) or leave out --eval_test')
    return user_code.call_factory(factory, spec, what, root=datapath, train=train)


def load_custom(spec, datapath, train=True):
    dataset = make_custom_dataset(spec, datapath, train)
    try:
        n = len(dataset)
    except TypeError:
        raise UsageError(f'--dataset {spec!r}: the factory must return a sized torch Dataset') from None
    if n == 0:
        raise UsageError(f'--dataset {spec!r} returned an empty dataset')
    inputs, targets = zip(*(dataset[i] for i in range(n)))
    inputs = torch.stack([torch.as_tensor(np.asarray(x)) for x in inputs]).float()
    targets = torch.as_tensor([int(t) for t in targets], dtype=torch.long)
    return CachedDataset(inputs, targets, int(targets.max()) + 1)


def is_custom(dataset):
    return ':' in dataset


def load_dataset(dataset, datapath, train=True, raw_data=False, data_split=1, split_idx=0,
                 download=False, device='cpu', labels_file=None):
    """Read ``dataset`` once, keep the --data_split/--split_idx part, move it to ``device``.
    ``labels_file``: labels that replace the stored ones (e.g. the corrupted training labels
    that cifar10/main.py --label_corrupt_prob saves), in dataset order."""
    if dataset == 'cifar10':
        data = load_cifar10(datapath, train, raw_data, download)
    elif dataset == 'digits':
        data = load_digits(train, raw_data)
    elif is_custom(dataset):
        data = load_custom(dataset, datapath, train)
    else:
        raise UsageError(f'unknown --dataset {dataset!r}: use one of {", ".join(BUILTIN_DATASETS)} '
                         'or package.module:factory')
    if len(data) == 0:
        raise UsageError(f'--dataset {dataset!r} has no {"training" if train else "test"} samples')
    if labels_file:
        data.targets = read_labels(labels_file, len(data))
    if data_split > 1:
        data = data.subset(split_indices(len(data), data_split, split_idx))
    return data.to(device)


def read_labels(path, expected_count, flag='--train_labels'):
    """An int64 label tensor saved with torch.save (TRAIN_LABELS_FILE of a --label_corrupt_prob
    training run), checked against the data's length."""
    check_file_exists(path, flag)
    try:
        labels = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not a label file"
        raise UsageError(f'{flag} {path!r} is not a saved label tensor ({type(err).__name__})') from None
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise UsageError(f'{flag} {path!r} must hold a 1-D int64 tensor')
    if len(labels) != expected_count:
        raise UsageError(f'{flag} {path!r} has {len(labels)} labels, the data has {expected_count} samples')
    return labels


SAMPLE_STREAMS = {True: 0, False: 1}   # the training and the test split draw from streams of their own


def sample_indices(n, samples, sample_seed, train=True):
    """The sorted indices of the --samples subset of a split of ``n`` samples: the first
    ``samples`` of a permutation seeded by (``sample_seed``, the split), so a smaller subset of the
    same seed lies inside a larger one (what --target_stderr's doubling walks through). The
    training split must hold ``samples``; the test split gives min(``samples``, n)."""
    if train and samples > n:
        raise UsageError(f'--samples {samples} is more than the {n} samples of the training data'
                         ' (after --data_split, when given); pass at most that many')
    order = np.random.default_rng([sample_seed, SAMPLE_STREAMS[train]]).permutation(n)
    return np.sort(order[:min(samples, n)])


def split_indices(n, data_split, split_idx):
    """The sorted indices of part ``split_idx`` of ``data_split`` fixed, seeded, near-equal parts."""
    if data_split > n:
        raise UsageError(f'--data_split={data_split} is larger than the {n} samples in the data')
    if not 0 <= split_idx < data_split:
        raise UsageError(f'--split_idx={split_idx} must be in [0, {data_split})')
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(np.array_split(order, data_split)[split_idx])
