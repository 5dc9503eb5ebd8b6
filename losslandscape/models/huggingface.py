"""Models built from a Hugging Face model folder alone (config.json and safetensors weights, as
save_pretrained writes them), with no --model factory: the architecture is config.json's
``architectures`` (its first entry), a class of the transformers package, loaded by its own
``from_pretrained`` from the folder, offline. transformers is imported only here, and only when a
folder is used, so it stays an optional dependency.

The model keeps the dtype it was saved in (``dtype='auto'``) and transformers' default attention
(scaled_dot_product_attention where the model has it); from_pretrained builds it on the meta
device and reads each tensor from the memory-mapped shards into place, so the checkpoint is never
held twice. Everything that does not fit -- a tensor missing, left over or of another shape --
is refused in one line instead of transformers' newly initialised weights and load report.

The objective a folder's model gets when --loss_name is not given (``default_loss_name``): a causal
language model (an architecture named ...ForCausalLM, or one transformers registers for causal
language modelling, such as GPT2LMHeadModel) is evaluated by 'causal_lm', any other by 'model'
(the model's own .loss, from the labels in the batch).
"""
import contextlib
import json
import logging
import os

import torch

from losslandscape.errors import UsageError
from losslandscape.models import checkpoints

CAUSAL_LM_SUFFIX = 'ForCausalLM'


def _source(path, flag):
    return f'{flag}{path!r}' if flag.endswith('=') else f'{flag} {path!r}'


def _transformers(source):
    try:
        import transformers
    except ImportError:
        raise UsageError(f'{source} is a Hugging Face model folder, which needs the transformers package '
                         "(pip install 'loss-landscape[transformers]')") from None
    return transformers


def read_config(path, flag='--model_file'):
    """config.json of the model folder ``path`` as a dict (UsageError when missing or not JSON)."""
    source = _source(path, flag)
    config_path = os.path.join(path, checkpoints.HF_CONFIG)
    if not os.path.isfile(config_path):
        raise UsageError(f'{source} is a folder without {checkpoints.HF_CONFIG}: a Hugging Face model folder '
                         '(as save_pretrained writes it) is expected')
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError(f'{source}: {checkpoints.HF_CONFIG} is not readable JSON ({err})') from None
    if not isinstance(config, dict):
        raise UsageError(f'{source}: {checkpoints.HF_CONFIG} holds no JSON object')
    return config


def architecture_name(config, source):
    """The first entry of config.json's ``architectures`` (UsageError when there is none)."""
    names = config.get('architectures')
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise UsageError(f'{source}: {checkpoints.HF_CONFIG} names no "architectures", so the model class is '
                         'unknown: add it (e.g. "architectures": ["GPT2LMHeadModel"]) or pass --model '
                         'package.module:factory')
    return names[0]


def architecture_class(name, source):
    """The transformers class called ``name`` (UsageError when transformers has no such model)."""
    transformers = _transformers(source)
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UsageError(f'{source}: the architecture {name!r} of its {checkpoints.HF_CONFIG} is not a model '
                         f'class of transformers {transformers.__version__}; pass --model package.module:factory '
                         'to build it')
    return cls


def check_folder(path, flag='--model_file'):
    """Refuse, before any work, a folder that cannot give a model without --model: no or bad
    config.json, an architecture transformers lacks, weights missing (a shard the index names
    among them)."""
    source = _source(path, flag)
    architecture_class(architecture_name(read_config(path, flag), source), source)
    checkpoints.folder_weight_files(path, source)


def is_causal_lm(name):
    """Whether the architecture ``name`` is a causal language model (see the module docstring)."""
    if name.endswith(CAUSAL_LM_SUFFIX):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    for registered in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        if name == registered or (isinstance(registered, (list, tuple)) and name in registered):
            return True
    return False


def default_loss_name(path, flag='--model_file'):
    """The --loss_name a folder's model gets when none is given: 'causal_lm' or 'model'. A folder
    whose config.json names no architecture (its model built by --model) gets 'model'."""
    names = read_config(path, flag).get('architectures')
    if isinstance(names, list) and names and isinstance(names[0], str):
        _transformers(_source(path, flag))
        return 'causal_lm' if is_causal_lm(names[0]) else 'model'
    return 'model'


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """transformers' own loading output (progress bars, its load report) silenced: what matters in
    it is refused in one line here, from the loading information."""
    hf_logging = transformers.utils.logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.CRITICAL)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _saved_dtype(transformers):
    """from_pretrained's keyword for "the dtype the weights were saved in": 'dtype' since
    transformers 4.56, 'torch_dtype' before."""
    major, minor = (int(part) for part in transformers.__version__.split('.')[:2])
    return {'dtype' if (major, minor) >= (4, 56) else 'torch_dtype': 'auto'}


def _refuse_misfits(info, source, name):
    """UsageError for the first tensor that does not fit the architecture (loading information of
    from_pretrained: mismatched shapes, missing and unexpected tensors)."""
    mismatched = sorted(info.get('mismatched_keys') or [], key=lambda m: m[0])
    if mismatched:
        key, stored, wanted = mismatched[0]
        raise UsageError(f'{source} does not fit its architecture {name}: tensor {key!r} has shape {tuple(stored)}, '
                         f'the model its {checkpoints.HF_CONFIG} describes needs {tuple(wanted)}')
    missing = sorted(info.get('missing_keys') or [])
    if missing:
        raise UsageError(f'{source} does not fit its architecture {name}: tensor {missing[0]!r} is missing '
                         f'({len(missing)} missing in all)')
    unexpected = sorted(info.get('unexpected_keys') or [])
    if unexpected:
        raise UsageError(f'{source} does not fit its architecture {name}: unexpected tensor {unexpected[0]!r}')
    errors = info.get('error_msgs') or []
    if errors:
        raise UsageError(f'{source} does not load into {name}: {str(errors[0]).strip().splitlines()[0]}')


def load_folder(path, flag='--model_file', device_map=None):
    """The model of the Hugging Face folder ``path``, its weights the folder's, in eval mode.
    ``device_map`` 'auto': spread over the GPUs (and the CPU) by accelerate, each tensor placed
    once where it stays (--device_map)."""
    source = _source(path, flag)
    config = read_config(path, flag)
    name = architecture_name(config, source)
    cls = architecture_class(name, source)
    # The shards' headers and the index are checked first: a missing or damaged shard is named.
    with checkpoints.open_checkpoint(path, flag):
        pass
    transformers = _transformers(source)
    try:
        with _quiet_transformers(transformers):
            # A fixed random state for the weights transformers initialises before it loads (none
            # survives: every misfit is refused), and the caller's left as it was.
            with torch.random.fork_rng(devices=[]):
                placement = {} if device_map is None else {'device_map': device_map}
                net, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                ignore_mismatched_sizes=True, **_saved_dtype(transformers), **placement)
    except UsageError:
        raise
    except Exception as err:   # transformers raises many types for a folder it cannot load; all mean that
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise UsageError(f'{source} cannot be loaded as {name} ({type(err).__name__}: {first})') from None
    _refuse_misfits(info, source, name)
    return net.eval()


def load_into_architecture(path, flag, architecture_folder):
    """The architecture of the folder ``architecture_folder`` with the tensors of the checkpoint
    ``path`` (a .safetensors or torch.save'd state_dict: another point beside a folder's model)."""
    from losslandscape.models import loading
    source = _source(architecture_folder, '--model_file')
    config = read_config(architecture_folder)
    cls = architecture_class(architecture_name(config, source), source)
    transformers = _transformers(source)
    with _quiet_transformers(transformers), torch.random.fork_rng(devices=[]):
        net = cls(cls.config_class.from_pretrained(architecture_folder, local_files_only=True))
    return loading.load_checkpoint(net, path, flag).eval()
