"""Checkpoints read tensor by tensor, whatever their format, so that nothing needs a whole second
copy of a model in memory (a direction between two checkpoints is made one tensor at a time).

Formats (``open_checkpoint`` tells them apart):
  torch         a file torch.save wrote: a state_dict, or a dict holding one under 'state_dict'
                (the original code's .t7 files, with 'epoch' and 'acc'); read with
                weights_only=True, memory-mapped where the file's format allows it
  safetensors   a ``.safetensors`` file: one state_dict
  folder        a Hugging Face model folder as save_pretrained writes it: config.json beside
                model.safetensors, or beside model.safetensors.index.json and the shards it names

A DataParallel 'module.' prefix on every key is stripped. Tensors are read onto the CPU.
"""
import json
import os

import torch

from losslandscape.cli.parsing import check_file_exists
from losslandscape.errors import UsageError

DATAPARALLEL_PREFIX = 'module.'
SAFETENSORS_SUFFIX = '.safetensors'
HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
HF_INDEX = 'model.safetensors.index.json'
FORMATS = ('torch', 'safetensors', 'folder')


def checkpoint_format(path):
    """'folder', 'safetensors' or 'torch': what ``path`` is read as (by its kind and name)."""
    if os.path.isdir(path):
        return 'folder'
    return 'safetensors' if str(path).endswith(SAFETENSORS_SUFFIX) else 'torch'


def is_model_folder(path):
    return bool(path) and os.path.isdir(path)


class Checkpoint:
    """One checkpoint's tensors by name: ``names()``, ``shape(name)``, ``tensor(name)`` (a CPU
    tensor, read when asked). ``source`` is how errors name it ('--model_file2 'run/b''). Use it
    as a context manager, or call ``close``."""

    def __init__(self, path, source):
        self.path, self.source = path, source

    def names(self):
        raise NotImplementedError

    def tensor(self, name):
        raise NotImplementedError

    def shape(self, name):
        return tuple(self.tensor(name).shape)

    def state_dict(self):
        """Every tensor, as one dict (the whole checkpoint in memory: for small models)."""
        return {name: self.tensor(name) for name in self.names()}

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _strip_dataparallel(names):
    """{name as the model knows it: name as stored}."""
    names = list(names)
    if names and all(n.startswith(DATAPARALLEL_PREFIX) for n in names):
        return {n[len(DATAPARALLEL_PREFIX):]: n for n in names}
    return {n: n for n in names}


class TorchCheckpoint(Checkpoint):
    """A torch.save'd state_dict (or {'state_dict': ...}), memory-mapped where it can be: the
    tensors' bytes are read from the file as they are used, not all at once."""

    def __init__(self, path, source, read):
        super().__init__(path, source)
        stored = read(path)
        state = stored.get('state_dict', stored) if isinstance(stored, dict) else None
        if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
            raise UsageError(f'{source} holds neither a state_dict nor a dict with a "state_dict"')
        self._state = {name: state[key] for name, key in _strip_dataparallel(state).items()}

    def names(self):
        return list(self._state)

    def shape(self, name):
        return tuple(self._state[name].shape)

    def tensor(self, name):
        return self._state[name]

    def close(self):
        self._state = {}


class SafetensorsCheckpoint(Checkpoint):
    """One or more .safetensors files (a folder's shards): each tensor read from its file when asked."""

    def __init__(self, path, source, files):
        """``files``: {tensor name: file} (one file for all names when the map is None)."""
        super().__init__(path, source)
        from safetensors import safe_open
        self._handles, self._file_of = {}, {}
        for file in sorted(set(files.values())):
            try:
                self._handles[file] = safe_open(file, framework='pt', device='cpu')
            except Exception as err:   # safetensors raises its own error types for a bad header
                raise UsageError(f'{source}: {os.path.basename(file)!r} is not a readable safetensors file '
                                 f'({_first_line(err)})') from None
        for name, file in files.items():
            if name is None:   # the single-file form: every key of the file
                self._file_of.update({key: file for key in self._handles[file].keys()})
            else:
                self._file_of[name] = file
        missing = [n for n, f in self._file_of.items() if n not in self._handles[f].keys()]
        if missing:
            raise UsageError(f'{source}: {missing[0]!r} is not in {os.path.basename(self._file_of[missing[0]])!r}, '
                             'which the index names for it')
        self._names = _strip_dataparallel(self._file_of)

    def names(self):
        return list(self._names)

    def shape(self, name):
        key = self._names[name]
        return tuple(self._handles[self._file_of[key]].get_slice(key).get_shape())

    def tensor(self, name):
        key = self._names[name]
        return self._handles[self._file_of[key]].get_tensor(key)

    def close(self):
        self._handles = {}


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def folder_weight_files(path, source):
    """{tensor name: shard file} of a Hugging Face model folder, or {None: file} for one unsharded
    file; UsageError for a folder without config.json or safetensors weights, or a shard missing."""
    if not os.path.isfile(os.path.join(path, HF_CONFIG)):
        raise UsageError(f'{source} is a folder without {HF_CONFIG}: a Hugging Face model folder '
                         '(as save_pretrained writes it) is expected')
    index = os.path.join(path, HF_INDEX)
    single = os.path.join(path, HF_WEIGHTS)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)['weight_map']
            files = {name: os.path.join(path, shard) for name, shard in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f'{source}: {HF_INDEX} is not a safetensors index ({_first_line(err)})') from None
        absent = sorted({f for f in files.values() if not os.path.isfile(f)})
        if absent:
            raise UsageError(f'{source}: shard {os.path.basename(absent[0])!r} named in {HF_INDEX} is missing')
        return files
    if os.path.isfile(single):
        return {None: single}
    others = sorted(f for f in os.listdir(path) if f.endswith(('.bin', '.pt', '.pth', '.ckpt')))
    hint = f' (it has {others[0]!r}: save the model with safe_serialization, the default)' if others else ''
    raise UsageError(f'{source} has no {HF_WEIGHTS} nor {HF_INDEX}{hint}')


def open_checkpoint(path, flag='--model_file', read_torch=None):
    """The Checkpoint at ``path`` (UsageError naming ``flag`` when it is missing or unreadable).
    ``read_torch(path)``: how a torch.save'd file is read (models.loading.read_checkpoint)."""
    source = f'{flag}{path!r}' if flag.endswith('=') else f'{flag} {path!r}'
    kind = checkpoint_format(path)
    if kind != 'folder':
        check_file_exists(path, flag)
    if kind == 'folder':
        return SafetensorsCheckpoint(path, source, folder_weight_files(path, source))
    if kind == 'safetensors':
        return SafetensorsCheckpoint(path, source, {None: path})
    if read_torch is None:
        from losslandscape.models.loading import read_checkpoint
        read_torch = lambda p: read_checkpoint(p, flag, mmap=True)   # noqa: E731
    return TorchCheckpoint(path, source, read_torch)
