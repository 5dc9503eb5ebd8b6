"""Timed compute configurations remembered per machine: only the first run of a model on a machine
pays for timing its configuration (compute/choosing.py); later runs start at once.

The cache is one JSON file, ``compute_configs.json``, in $LANDSCAPE_CACHE_DIR, else in
$XDG_CACHE_HOME/loss-landscape, else in ~/.cache/loss-landscape; LANDSCAPE_CACHE_DIR set to the
empty string turns it off. It maps a key to the configuration a timed search chose and the line
that said why. The key is a hash of everything the timing depended on: the kind of run, the
device (CPU vendor, family, model and instruction set, threads; or GPU name and capability), the
PyTorch version, the model's architecture (its module types, parameter and buffer names, shapes
and dtypes), the probe's input shape and size, the loss, --amp, and which parts were given or free.
Anything else that changes gives another key, so a stale entry is never found for it.

Precedence stays compute_config's: flags, then --compute_config plain, then the surface file's
record on resume, then this cache (under auto), then timing. --compute_config search always times
again and replaces the entry. The cache only saves time: a file that cannot be read is treated as
empty, one that cannot be written is left alone (the run warns in one line), and neither stops a run.
"""
import hashlib
import json
import os
import platform
import time

import torch

from losslandscape.io import file_safety

ENV_VARIABLE = 'LANDSCAPE_CACHE_DIR'
FILE_NAME = 'compute_configs.json'
FORMAT_VERSION = 1      # part of every key: a change of what is stored makes old entries unreachable
MAX_ENTRIES = 200       # the newest are kept; a few hundred bytes each
CPU_FIELDS = ('vendor_id', 'cpu family', 'model', 'model name')
CPU_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')   # the ones kernels branch on


def cache_file():
    """The cache's path, or None when caching is turned off."""
    if ENV_VARIABLE in os.environ:
        folder = os.environ[ENV_VARIABLE]
        return os.path.join(folder, FILE_NAME) if folder else None
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'loss-landscape', FILE_NAME)


def device_identity(device):
    """What a timing on ``device`` depends on, beyond the model and data."""
    device = torch.device(device)
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {'gpu': torch.cuda.get_device_name(index),
                'capability': list(torch.cuda.get_device_capability(index))}
    return {'cpu': _cpu_description(), 'isa': torch.backends.cpu.get_cpu_capability(),
            'threads': torch.get_num_threads(), 'cpus': os.cpu_count()}


def _cpu_description():
    fields, flags = {}, set()
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                name, _, value = line.partition(':')
                name = name.strip()
                if name in CPU_FIELDS:
                    fields.setdefault(name, value.strip())
                elif name == 'flags':
                    flags = set(value.split())
                    break   # the first processor's block is enough
    except OSError:
        fields = {'processor': platform.processor() or platform.machine()}
    return {**fields, 'flags': [flag for flag in CPU_FLAGS if flag in flags]}


def model_identity(net):
    """The model's architecture: module types in order, and its tensors' names, shapes and dtypes."""
    modules = [f'{type(m).__module__}.{type(m).__qualname__}' for m in net.modules()]
    tensors = [(name, list(t.shape), str(t.dtype)) for name, t in (*net.named_parameters(), *net.named_buffers())]
    return {'modules': modules, 'tensors': tensors}


def make_key(**parts):
    """A key for ``parts`` (anything JSON can write; other values by their str())."""
    text = json.dumps({'format': FORMAT_VERSION, 'torch': torch.__version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key):
    """The entry stored under ``key`` (a dict), or None."""
    entry = _read(cache_file()).get(key)
    return entry if isinstance(entry, dict) else None


def store(key, entry):
    """Store ``entry`` (a dict of JSON values) under ``key``; returns whether it was written."""
    path = cache_file()
    if path is None:
        return False
    entries = _read(path)
    entries.pop(key, None)
    entries[key] = {**entry, 'stored': time.strftime('%Y-%m-%d %H:%M')}
    newest = dict(list(entries.items())[-MAX_ENTRIES:])   # JSON objects keep their order: oldest first
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with file_safety.atomic_path(path) as tmp, open(tmp, 'w') as out:
            json.dump(newest, out, indent=1)
    except (OSError, file_safety.UsageError):
        return False
    return True


def _read(path):
    if path is None:
        return {}
    try:
        with open(path) as fh:
            entries = json.load(fh)
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}
