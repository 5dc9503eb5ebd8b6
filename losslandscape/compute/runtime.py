"""Process-wide runtime settings every run makes: glibc keeping freed memory, CPU threads, bf16
support of the device, and the --amp warning where bf16 is emulated."""
import ctypes
import os
import sys

import torch

from losslandscape.compute import bn_folding
from losslandscape.parallel.mpi_comm import threads_for

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3            # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20                        # the most glibc accepts on 64-bit systems
TRIM_THRESHOLD_BYTES = 1 << 30
MALLOC_VARIABLES = ('GLIBC_TUNABLES', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_')


def keep_freed_memory():
    """Have glibc's malloc serve allocations below 32 MB from its heap and keep up to 1 GiB of freed
    memory there (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), so the activations of every batch
    reuse memory already mapped instead of being mapped, faulted in and unmapped again. Changes no
    value; the process keeps the memory of its largest batch. Left alone where the user tunes malloc
    (GLIBC_TUNABLES, MALLOC_*_) and where there is no glibc. Returns whether it was set."""
    if any(variable in os.environ for variable in MALLOC_VARIABLES) or not sys.platform.startswith('linux'):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trimmed = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return trimmed and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


# ----------------------------------------------------------------------------- bf16

def native_bf16(device):
    """Whether ``device`` computes bfloat16 natively (a GPU with bf16 support; a CPU with
    AVX512-BF16 or AMX, as oneDNN sees it): elsewhere --amp is emulated, and much slower."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bn_folding.onednn_bf16()


def warn_about_amp(settings, device):
    """--amp on a CPU without bf16 instructions: say it is slow (rank 0 calls this)."""
    if settings.amp and not native_bf16(device):
        print('warning: --amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so bfloat16 is '
              'emulated and far slower than float32 (15x in benchmarks/RESULTS.md); run without --amp',
              file=sys.stderr, flush=True)


def set_threads(requested, comm):
    """Set torch's CPU threads for this rank (mpi_comm.threads_for) and return what the compute
    line says of them, e.g. '2 threads (the 2 cores this process may use)'."""
    threads, why = threads_for(requested, comm)
    torch.set_num_threads(threads)
    return f'{threads} thread{"s" if threads != 1 else ""} ({why})'
