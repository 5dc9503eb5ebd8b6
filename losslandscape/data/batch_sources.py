"""Batch sources: how a data set reaches the model at a grid point, resident on the evaluation
device (CachedBatches, ResidentBatches) or streamed through a DataLoader (StreamedBatches), and the
choice between them (--data_mode)."""
import os

import torch

from losslandscape.data import datasets
from losslandscape.errors import UsageError

# ----------------------------------------------------------------------------- batch sources
#
# What the grid scripts evaluate: a *batch source*, an object with ``batches()`` (an iterable of
# batches already on ``device``), ``num_samples``, ``device`` and ``streamed``. Built-in data sets
# are CachedBatches over a CachedDataset; any other torch Dataset (items: tensors, tuples or dicts
# of tensors) is collated by torch's default_collate in a fixed order, in batches of --batch_size,
# and either kept on the device (ResidentBatches) or streamed from host memory by a DataLoader
# with workers and pinned memory at every evaluation (StreamedBatches). Both give the same
# batches, so the same values.

DATA_MODES = ('auto', 'resident', 'stream')
# --data_mode auto keeps the data resident when it takes at most this share of the memory it
# would sit in (free GPU memory, or available host memory for the CPU), divided among the ranks
# of a node: the rest is left to the model's activations and the gradient passes of the Hessian.
RESIDENT_MEMORY_SHARE = 0.25


def add_data_mode_arguments(group):
    group.add_argument('--data_mode', default='auto', choices=DATA_MODES,
                       help='resident: the whole data set stays on the evaluation device (fastest); stream: it '
                       'stays in host memory and a DataLoader brings it batch by batch at every evaluation (for '
                       'data larger than device memory); auto: resident when it takes at most '
                       f'{RESIDENT_MEMORY_SHARE * 100:.0f} %% of the free memory of the device (shared among a node\'s ranks)')
    group.add_argument('--workers', default=None, type=int, help='DataLoader worker processes when streaming '
                       '(default: 0 on the CPU, where the model needs the cores; 4 with --cuda)')


def map_tensors(batch, fn):
    """``batch`` with ``fn`` applied to every tensor in it (dicts, lists and tuples followed)."""
    if torch.is_tensor(batch):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def batch_bytes(batch):
    total = [0]
    map_tensors(batch, lambda t: total.__setitem__(0, total[0] + t.element_size() * t.numel()))
    return total[0]


def to_channels_last(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point() else t


class CachedBatches:
    """A built-in data set (CachedDataset) as a batch source; resident on ``device``, or held on
    the host and streamed batch by batch (``stream``)."""

    def __init__(self, data, batch_size, device, stream=False):
        self.data = data.to('cpu' if stream else device)
        self.batch_size, self.device, self.streamed = batch_size, torch.device(device), stream
        self.num_samples = len(data)

    def batches(self):
        return self.data.batches(self.batch_size, self.device if self.streamed else None)

    def first_batch(self, size):
        """The first ``size`` samples as one batch, however the source is batched."""
        return next(self.data.batches(size, self.device if self.streamed else None))

    def channels_last(self):
        self.data = self.data.channels_last()
        return self


class ResidentBatches:
    """Collated batches kept on the evaluation device."""
    streamed = False

    def __init__(self, dataset, batch_size, device):
        self.device, self.num_samples, self.batch_size = torch.device(device), len(dataset), batch_size
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        self._batches = [map_tensors(batch, lambda t: t.to(self.device)) for batch in loader]

    def batches(self):
        return iter(self._batches)

    def channels_last(self):
        self._batches = [map_tensors(batch, to_channels_last) for batch in self._batches]
        return self


class StreamedBatches:
    """Batches collated from host memory at every evaluation (fixed order), moved to the device
    one at a time; rank 0 shows a progress bar of each pass (``desc``)."""
    streamed = True

    def __init__(self, dataset, batch_size, device, workers=0, desc='streaming data'):
        self.device, self.num_samples, self.desc = torch.device(device), len(dataset), desc
        self.batch_size = batch_size
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == 'cuda', persistent_workers=workers > 0)
        self.layout = None

    def batches(self):
        from losslandscape.engine.progress import progress_iter
        from losslandscape.parallel.mpi_comm import is_speaking_rank
        for batch in progress_iter(self.loader, self.desc, 'batch', leave=False, disable=not is_speaking_rank()):
            batch = map_tensors(batch, lambda t: t.to(self.device, non_blocking=True))
            yield batch if self.layout is None else map_tensors(batch, self.layout)

    def channels_last(self):
        self.layout = to_channels_last
        return self


class RelabeledDataset(torch.utils.data.Dataset):
    """A dataset of (input, label) pairs with the labels replaced (--train_labels)."""

    def __init__(self, dataset, labels):
        self.dataset, self.labels = dataset, labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise UsageError('--train_labels replaces the labels of (input, label) items; this data set\'s '
                             f'items are {type(item).__name__}')
        return item[0], self.labels[i]


def open_custom_dataset(dataset, datapath, train, what='--dataset'):
    """The torch Dataset a ``package.module:factory`` spec makes (or ``dataset`` itself, when it is
    one already: api.py), checked to be sized and non-empty."""
    if isinstance(dataset, str):
        made = datasets.make_custom_dataset(dataset, datapath, train, what)
        name = f'{what} {dataset!r}'
    else:
        made, name = dataset, 'the dataset'
    try:
        n = len(made)
    except TypeError:
        raise UsageError(f'{name}: the factory must return a sized torch Dataset '
                         f'(got {type(made).__name__})') from None
    if n == 0:
        raise UsageError(f'{name} has no {"training" if train else "test"} samples')
    return made


def choose_mode(dataset, batch_size, device, share=1):
    """'resident' or 'stream' for --data_mode auto: resident when the whole data set, estimated
    from its first batch, takes at most RESIDENT_MEMORY_SHARE of the device's free memory (of the
    host's available memory for the CPU), divided by ``share`` (the ranks on this node)."""
    first = next(iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)))
    estimate = batch_bytes(first) * -(-len(dataset) // batch_size)
    return 'resident' if estimate <= RESIDENT_MEMORY_SHARE * free_memory_bytes(device) / share else 'stream'


def free_memory_bytes(device):
    """The free memory of ``device`` in bytes: the GPU's free memory for CUDA, else the host's
    available memory (what --data_mode auto and the Hessian's retained gradient graphs size
    themselves against)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def batch_source(dataset, datapath, train, batch_size, device, mode='auto', workers=None, *, raw_data=False,
                 data_split=1, split_idx=0, download=False, labels_file=None, share=1, samples=None, sample_seed=0):
    """The batch source of the training (``train``) or test split of ``dataset``: a built-in name,
    a ``package.module:factory`` spec, or a torch Dataset object. ``samples``: only a seeded random
    subset of that many samples of the (--data_split part of the) split, drawn by
    datasets.sample_indices under ``sample_seed``, in the data's order (None: all of them)."""
    return open_split(dataset, datapath, train, raw_data=raw_data, data_split=data_split, split_idx=split_idx,
                      download=download, labels_file=labels_file).source(
        batch_size, device, mode, workers, share=share, samples=samples, sample_seed=sample_seed)


def open_split(dataset, datapath, train, *, raw_data=False, data_split=1, split_idx=0, download=False,
               labels_file=None):
    """The split of ``dataset`` read once (OpenSplit), whose batch sources of any --samples subset
    are then made without reading it again (what --target_stderr's search needs)."""
    if isinstance(dataset, str) and dataset in datasets.BUILTIN_DATASETS:
        return OpenSplit(datasets.load_dataset(dataset, datapath, train, raw_data, data_split, split_idx, download,
                                               labels_file=labels_file), train)
    if isinstance(dataset, str) and not datasets.is_custom(dataset):
        raise UsageError(f'unknown --dataset {dataset!r}: use one of {", ".join(datasets.BUILTIN_DATASETS)} '
                         'or package.module:factory')
    made = open_custom_dataset(dataset, datapath, train)
    if labels_file:
        made = RelabeledDataset(made, datasets.read_labels(labels_file, len(made)))
    if data_split > 1:
        made = torch.utils.data.Subset(made, datasets.split_indices(len(made), data_split, split_idx).tolist())
    return OpenSplit(made, train)


class OpenSplit:
    """One split of a data set, read: a CachedDataset (built-in) or a torch Dataset."""

    def __init__(self, data, train):
        self.data, self.train = data, train

    def __len__(self):
        return len(self.data)

    def source(self, batch_size, device, mode='auto', workers=None, *, share=1, samples=None, sample_seed=0):
        """Its batch source (see batch_source)."""
        device, data = torch.device(device), self.data
        if samples is not None:
            indices = datasets.sample_indices(len(data), samples, sample_seed, self.train)
            data = data.subset(indices) if isinstance(data, datasets.CachedDataset) else \
                torch.utils.data.Subset(data, indices.tolist())
        if isinstance(data, datasets.CachedDataset):
            return CachedBatches(data, batch_size, device, stream=mode == 'stream')
        return collated_source(data, batch_size, device, mode, workers, share, self.train)


def collated_source(made, batch_size, device, mode, workers, share, train):
    """A torch Dataset's batches, collated: resident or streamed (--data_mode)."""
    try:
        if mode == 'auto':
            mode = choose_mode(made, batch_size, device, share)
        if mode == 'resident':
            return ResidentBatches(made, batch_size, device)
        workers = (4 if device.type == 'cuda' else 0) if workers is None else workers
        return StreamedBatches(made, batch_size, device, workers,
                               desc=f'streaming {"training" if train else "test"} data')
    except (TypeError, RuntimeError) as err:
        # default_collate's complaint about items it cannot batch (mixed types, unequal shapes).
        raise UsageError(f'the items of the {"training" if train else "test"} data cannot be batched '
                         f'({str(err).splitlines()[0]})') from None
