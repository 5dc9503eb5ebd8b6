"""Building a model by name and loading a checkpoint into it.

Names: the zoo of the dataset (cifar10/zoo.py, digits/models.py), or
``package.module:factory`` for any nn.Module the user writes (called with no arguments, or with
the keyword arguments the spec gives: ``package.module:factory(depth=20)``, user_code.py).
Checkpoints: a dict holding 'state_dict' (the original code's format: also 'epoch', 'acc') or a
bare state_dict, always read with weights_only=True; a .safetensors file; a Hugging Face model
folder (models.checkpoints). A DataParallel 'module.' prefix is stripped.
"""
import itertools
import re
import zipfile

import torch

from losslandscape.cli.parsing import check_file_exists
from losslandscape.data.user_code import call_factory, import_factory
from losslandscape.errors import UsageError
from losslandscape.models import checkpoints

ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')   # torch's messages colour some words for terminals
# What torch.load(weights_only=True) names when the file pickles an object of a class (a whole model).
PICKLED_CLASS = re.compile(r'Unsupported global: GLOBAL ([\w.]+)')


def zoo(dataset):
    """The name -> constructor registry for ``dataset`` (custom datasets see every zoo)."""
    from losslandscape.models.cifar10.zoo import MODELS as CIFAR10_MODELS
    from losslandscape.models.digits import MODELS as DIGITS_MODELS
    zoos = {'cifar10': CIFAR10_MODELS, 'digits': DIGITS_MODELS}
    if dataset in zoos:
        return zoos[dataset]
    return {**CIFAR10_MODELS, **DIGITS_MODELS}


def check_model_name(dataset, name):
    """Raise UsageError for a model name that is neither in the zoo nor a factory spec."""
    if ':' in name:
        import_factory(name, '--model')
    elif name not in zoo(dataset):
        raise UsageError(f'unknown --model {name!r} for dataset {dataset!r}; choose one of '
                         f'{", ".join(sorted(zoo(dataset)))} or give package.module:factory')


def build(dataset, name):
    """A freshly initialised model (UsageError for an unknown name)."""
    check_model_name(dataset, name)
    if ':' in name:
        net = call_factory(import_factory(name, '--model'), name, '--model')
    else:
        net = zoo(dataset)[name]()
    if not isinstance(net, torch.nn.Module):
        raise UsageError(f'--model {name!r} returned {type(net).__name__}, not a torch.nn.Module')
    return net


def read_checkpoint(path, flag='--model_file', mmap=False):
    """What the PyTorch checkpoint ``path`` holds, read with weights_only=True onto the CPU
    (UsageError naming ``flag`` if it is missing or not a checkpoint). ``mmap``: map the file's
    tensors instead of reading them (files of torch's zip format; older ones are read whole)."""
    check_file_exists(path, flag)
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not a checkpoint"
        text = ANSI_ESCAPE.sub('', str(err))
        pickled = PICKLED_CLASS.search(text)
        if pickled:
            raise UsageError(f'{flag} {path!r} holds a pickled {pickled.group(1)} object, not a state_dict (was it '
                             'saved with torch.save(model)?): save the weights instead, torch.save(model.state_dict(), '
                             'path), and pass that file') from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise UsageError(f'{flag} {path!r} is not a readable PyTorch checkpoint ({first})') from None


def check_checkpoint_exists(path, flag='--model_file'):
    """Raise UsageError unless ``path`` is a checkpoint file, or a Hugging Face model folder with
    config.json and its weights (every shard its index names)."""
    if checkpoints.is_model_folder(path):
        checkpoints.folder_weight_files(path, f'{flag}{path!r}' if flag.endswith('=') else f'{flag} {path!r}')
    else:
        check_file_exists(path, flag)


def read_state_dict(path, flag='--model_file'):
    """The state_dict stored in checkpoint ``path``: a torch.save'd file, a .safetensors file or
    a Hugging Face model folder (models.checkpoints; UsageError if it cannot be one)."""
    with checkpoints.open_checkpoint(path, flag, read_torch=lambda p: read_checkpoint(p, flag)) as checkpoint:
        return checkpoint.state_dict()


def _tied_names(net):
    """{state_dict name: the other names of the same tensor} for tensors a model holds under
    several names (tied weights: GPT-2's lm_head.weight is transformer.wte.weight)."""
    by_storage = {}
    for name, tensor in net.state_dict(keep_vars=True).items():
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel():
            by_storage.setdefault(key, []).append(name)
    return {name: [other for other in names if other != name]
            for names in by_storage.values() if len(names) > 1 for name in names}


def _fit(net, shapes, source):
    """{model's state_dict name: the name it is stored under} for a checkpoint whose tensors have
    ``shapes`` ({name: shape}), or UsageError naming the first key that does not fit. A tied tensor
    may be stored under one of its names only (save_pretrained and safetensors' save_model keep
    one): the others take it from there."""
    expected = net.state_dict()
    tied = _tied_names(net)
    stored_as = {}
    for key, tensor in expected.items():
        found = key if key in shapes else next((other for other in tied.get(key, ()) if other in shapes), None)
        if found is None:
            raise UsageError(f'{source} does not fit the model: key {key!r} is missing')
        if tuple(shapes[found]) != tuple(tensor.shape):
            raise UsageError(f'{source} does not fit the model: key {key!r} has shape '
                             f'{tuple(shapes[found])}, the model needs {tuple(tensor.shape)}')
        stored_as[key] = found
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise UsageError(f'{source} does not fit the model: unexpected key {extra[0]!r}')
    return stored_as


def load_state(net, state, source):
    """Copy ``state`` into ``net`` or raise UsageError naming the first key that does not fit."""
    stored_as = _fit(net, {k: tuple(v.shape) for k, v in state.items()}, source)
    net.load_state_dict({key: state[name] for key, name in stored_as.items()}, strict=True)
    return net


def load_checkpoint(net, path, flag='--model_file'):
    """Copy the checkpoint ``path`` (any format of models.checkpoints) into ``net`` one tensor at a
    time, checked first by its names and shapes alone: the checkpoint is never held beside the
    model (a torch.save'd file is memory-mapped, a safetensors file read tensor by tensor)."""
    source = f'{flag}{path!r}' if flag.endswith('=') else f'{flag} {path!r}'
    with checkpoints.open_checkpoint(path, flag, read_torch=lambda p: read_checkpoint(p, flag, mmap=True)) as stored:
        stored_as = _fit(net, {name: stored.shape(name) for name in stored.names()}, source)
        targets = net.state_dict()
        with torch.no_grad():
            for key, name in stored_as.items():
                targets[key].copy_(stored.tensor(name))
    return net


def load(dataset, model_name, model_file=None, flag='--model_file', init_seed=None, architecture_folder=None,
         device_map=None):
    """Build ``model_name`` (its initial weights drawn under ``init_seed`` when given, without
    touching the caller's random state) and, if given, load the checkpoint ``model_file`` into it.
    ``model_name`` None: a Hugging Face model, built from the folder ``model_file`` itself
    (models.huggingface), or for a checkpoint file from the folder ``architecture_folder`` (the
    centre's) with the file's tensors. ``device_map`` 'auto': a folder's model spread over the
    devices by accelerate (--device_map)."""
    if model_name is None:
        from losslandscape.models import huggingface
        if checkpoints.is_model_folder(model_file):
            return huggingface.load_folder(model_file, flag, device_map)
        if not checkpoints.is_model_folder(architecture_folder):
            raise UsageError(f'{flag} {model_file!r} is a file of tensors without a model: pass --model')
        return huggingface.load_into_architecture(model_file, flag, architecture_folder)
    if init_seed is None:
        net = build(dataset, model_name)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = build(dataset, model_name)
    if model_file:
        load_checkpoint(net, model_file, flag)
    net.eval()
    return net


def check_model_tensors(net, device, what='the model'):
    """Raise UsageError when ``net`` cannot be evaluated on ``device``: a tensor on the meta device
    (no values: a model built under torch.device('meta') or an empty-weights context), or on
    another accelerator than ``device`` (a CPU tensor is fine: the run moves the model)."""
    device = torch.device(device)
    for name, tensor in itertools.chain(net.named_parameters(), net.named_buffers()):
        if tensor.is_meta:
            raise UsageError(f'{what} has tensors on the meta device ({name!r}), which hold no values: build it with '
                             'real tensors (or load its weights with load_state_dict(..., assign=True)) first')
        if tensor.device.type != 'cpu' and tensor.device != device and \
                not (device.type == tensor.device.type and device.index is None):
            raise UsageError(f'{what} has tensors on {tensor.device} ({name!r}), but the run computes on {device}: '
                             + ('pass --cuda (cuda=True)' if device.type == 'cpu' else 'move the model to it')
                             + ', or build the model on the CPU')
