"""Building a model by name and loading a checkpoint into it.

Names: the zoo of the dataset (cifar10/zoo.py, digits/models.py), or
``package.module:factory`` for any nn.Module the user writes (called with no arguments).
Checkpoints: a dict holding 'state_dict' (the original code's format: also 'epoch', 'acc') or a
bare state_dict; a DataParallel 'module.' prefix is stripped; always read with weights_only=True.
"""
import torch

from losslandscape.cli.parsing import check_file_exists
from losslandscape.data.user_code import import_factory
from losslandscape.errors import UsageError

DATAPARALLEL_PREFIX = 'module.'


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
    net = import_factory(name, '--model')() if ':' in name else zoo(dataset)[name]()
    if not isinstance(net, torch.nn.Module):
        raise UsageError(f'--model {name!r} did not return a torch.nn.Module')
    return net


def read_checkpoint(path, flag='--model_file'):
    """What the PyTorch checkpoint ``path`` holds, read with weights_only=True onto the CPU
    (UsageError naming ``flag`` if it is missing or not a checkpoint)."""
    check_file_exists(path, flag)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not a checkpoint"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f'{flag} {path!r} is not a readable PyTorch checkpoint ({first})') from None


def read_state_dict(path, flag='--model_file'):
    """The state_dict stored in checkpoint ``path`` (UsageError if it cannot be one)."""
    checkpoint = read_checkpoint(path, flag)
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f'{flag} {path!r} holds neither a state_dict nor a dict with a "state_dict"')
    if all(k.startswith(DATAPARALLEL_PREFIX) for k in state):
        state = {k[len(DATAPARALLEL_PREFIX):]: v for k, v in state.items()}
    return state


def load_state(net, state, source):
    """Copy ``state`` into ``net`` or raise UsageError naming the first key that does not fit."""
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise UsageError(f'{source} does not fit the model: key {key!r} is missing')
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UsageError(f'{source} does not fit the model: key {key!r} has shape '
                             f'{tuple(state[key].shape)}, the model needs {tuple(tensor.shape)}')
    extra = [k for k in state if k not in expected]
    if extra:
        raise UsageError(f'{source} does not fit the model: unexpected key {extra[0]!r}')
    net.load_state_dict(state, strict=True)
    return net


def load(dataset, model_name, model_file=None, flag='--model_file'):
    """Build ``model_name`` and, if given, load the checkpoint ``model_file`` into it."""
    net = build(dataset, model_name)
    if model_file:
        load_state(net, read_state_dict(model_file, flag), f'{flag} {model_file!r}')
    net.eval()
    return net
