"""Memory of a 2D surface of a GPT-2 model, as a multiple of the model's own bytes, for each
--dir_mode (where the directions live), with the time per point each mode takes.

For each size (GPT-2 124M and 355M built from their configs, random weights, float32) the bench
saves a Hugging Face folder (save_pretrained, no download), then runs plot_surface.py on it in a
fresh process per mode: a 2x2 grid (--x=-1:1:2 --y=-1:1:2), 8 sequences of 32 tokens. The child
reads its resident set size after importing torch, transformers and the suite and running one
pass of a tiny GPT-2 (the baseline: what any run costs before it loads a model, the kernels' code
and thread pools included), resets its peak (/proc/self/clear_refs) and reads the peak resident
set size (VmHWM) at the end. Another child measures the activations of one batch: the peak of an
evaluation pass over the loaded model, above the model itself (at 124M mostly the logits of
8 x 32 tokens over 50257 words, and the loss's copies of them). Then

    multiple = (peak - baseline - activations) / model bytes

The issue's targets: at most 2.5 under stream and seed, at most 4.5 under resident.
Per point: the run's own "N points computed in S s" divided by N (the directions made and the
model loaded before it are not in it).

    python benchmarks/bench_memory.py [--sizes 124M 355M] [--modes resident stream seed]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, 'out', 'memory')
SIZES = {'124M': dict(n_layer=12, n_embd=768, n_head=12), '355M': dict(n_layer=24, n_embd=1024, n_head=16),
         'tiny': dict(n_layer=1, n_embd=32, n_head=2, vocab_size=100)}   # tiny: the warm-up pass only
MODES = ('resident', 'stream', 'seed')
SEQUENCES, TOKENS = 8, 32


def token_windows(root=None, train=True, vocab=50257):
    """``--dataset benchmarks.bench_memory:token_windows``: SEQUENCES random sequences of TOKENS
    GPT-2 token ids (seeded), each its own labels (the model shifts them)."""
    import torch
    generator = torch.Generator().manual_seed(0 if train else 1)
    ids = torch.randint(0, vocab, (SEQUENCES, TOKENS), generator=generator)
    return [{'input_ids': row, 'labels': row.clone()} for row in ids]


def tiny_token_windows(root=None, train=True):
    """The same over the tiny GPT-2's 100 words."""
    return token_windows(root, train, vocab=SIZES['tiny']['vocab_size'])


def dataset_of(size):
    return 'benchmarks.bench_memory:' + ('tiny_token_windows' if size == 'tiny' else 'token_windows')


def gpt2(size):
    """A GPT-2 of ``size`` (its config; random weights), in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(**SIZES[size], use_cache=False, bos_token_id=None, eos_token_id=None))
    model.loss_type = 'ForCausalLM'
    return model.eval()


def gpt2_124M():
    """``--model benchmarks.bench_memory:gpt2_124M`` (--source factory)."""
    return gpt2('124M')


def gpt2_355M():
    return gpt2('355M')


def save_model(size, folder):
    """A GPT-2 of ``size`` with seeded random weights, saved as a Hugging Face folder (and its
    weights as model.safetensors for --source factory); its bytes."""
    import torch
    torch.manual_seed(0)
    model = gpt2(size)
    model.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


CHILD = r'''
import json, sys
def rss(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
import torch, transformers
from losslandscape import plot_surface
from losslandscape._memory import release_freed_memory
from losslandscape.objectives import objective
from benchmarks.bench_memory import gpt2, tiny_token_windows, token_windows
mode, argv = sys.argv[1], sys.argv[2:]
cuda = '--cuda' in argv   # on a GPU: its peak allocated memory, from none allocated at the start
# The baseline: the interpreter with torch, transformers and the suite imported, after one pass of
# a tiny GPT-2 (the kernels' code and thread pools every run loads before its first point).
tiny = gpt2('tiny')
batch = {k: torch.stack([row[k] for row in tiny_token_windows()]) for k in ('input_ids', 'labels')}
with torch.no_grad():
    objective.resolve('causal_lm').sums(tiny, batch)
del tiny
release_freed_memory()

def start():
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')   # the peak (VmHWM) from here on
    return rss('VmRSS')

def peak():
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return rss('VmHWM')

status = 0
if mode == 'activations':
    # The activations of one batch: the peak of an evaluation pass over the model at rest.
    from losslandscape.models import loading
    net = loading.load(None, None, argv[0]).to('cuda' if cuda else 'cpu')
    rows = token_windows(vocab=net.config.vocab_size)
    data = {k: torch.stack([row[k] for row in rows]).to(next(net.parameters()).device) for k in ('input_ids', 'labels')}
    with torch.no_grad():
        objective.resolve('causal_lm').sums(net, data)
    release_freed_memory()
    baseline = start()
    with torch.no_grad():
        objective.resolve('causal_lm').sums(net, data)
else:
    baseline = start()
    try:
        plot_surface.main(argv)
    except SystemExit as stop:
        status = stop.code or 0
print('MEMORY ' + json.dumps({'baseline': baseline, 'peak': peak(), 'status': status}), flush=True)
'''


def child(mode, argv, env):
    """{'baseline', 'peak', 'status'} of one child process (CHILD) and its stdout."""
    done = subprocess.run([sys.executable, '-c', CHILD, mode, *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    found = re.search(r'^MEMORY (.*)$', done.stdout, re.M)
    if not found or json.loads(found.group(1))['status']:
        raise RuntimeError(f'{mode} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}')
    return json.loads(found.group(1)), done.stdout


def environment():
    return {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
            'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}


def activation_bytes(folder, cuda=False):
    """The peak of one batch's evaluation pass over the model, above the model itself."""
    record, _ = child('activations', [folder] + (['--cuda'] if cuda else []), environment())
    return record['peak'] - record['baseline']


def run_mode(folder, mode, work, source, size, extra=()):
    """(peak over baseline in bytes, seconds per point) of one 2D surface under ``mode``."""
    # A link per mode: each run makes its own direction file (default name, beside the link).
    link = os.path.join(work, f'run{len(os.listdir(work))}-{mode}-{os.path.basename(folder)}')
    os.symlink(folder if source == 'folder' else os.path.join(folder, 'model.safetensors'),
               link + ('' if source == 'folder' else '.safetensors'))
    model = ['--model_file', link] if source == 'folder' else \
        ['--model', f'benchmarks.bench_memory:gpt2_{size}', '--model_file', link + '.safetensors']
    argv = [*model, '--dataset', dataset_of(size), '--loss_name', 'causal_lm',
            '--x=-1:1:2', '--y=-1:1:2', '--batch_size', str(SEQUENCES), '--compute_config', 'plain',
            '--surf_file', link + '_surface.h5', *extra]
    argv += ['--dir_mode', mode]
    record, stdout = child('surface', argv, environment())
    timing = re.search(r'(\d+) points computed in ([\d.]+) s', stdout)
    return record['peak'] - record['baseline'], float(timing.group(2)) / int(timing.group(1))


def torch_device_name():
    import torch
    return torch.cuda.get_device_name(0)


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        import platform
        return platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', default=['124M', '355M'], choices=list(SIZES),
                        help='tiny: a 1-block GPT-2 over 100 words, for the tests')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=[*MODES, 'auto'],
                        help='the --dir_mode of each run (auto: the default, resident or stream as the free memory says)')
    parser.add_argument('--cuda', action='store_true', help='on the GPU: peak allocated GPU memory instead of RSS')
    parser.add_argument('--device_map', action='store_true', help='also a run with --device_map auto (stream)')
    parser.add_argument('--source', default='folder', choices=('folder', 'factory'),
                        help='folder: --model_file the Hugging Face folder; factory: --model a factory of this '
                        'module and --model_file the folder\'s model.safetensors')
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    where = torch_device_name() if args.cuda else cpu_model()
    print(f'# {where}; 2D surface of 2x2 points on {SEQUENCES} x {TOKENS} tokens, --source {args.source}')
    print('# per --dir_mode: (peak RSS - baseline - one batch\'s activations) / model bytes, the same without '
          'subtracting the activations, and seconds per point')
    names = [*args.modes, *(['device_map'] if args.device_map else [])]
    print(f'{"model":>6} {"bytes":>8} {"activ.":>7} ' + ' '.join(f'{m:>24}' for m in names))
    for size in args.sizes:
        work = tempfile.mkdtemp(dir=OUT)
        try:
            folder = os.path.join(work, f'gpt2-{size}')
            model_bytes = save_model(size, folder)
            activations = activation_bytes(folder, args.cuda)
            cells = []
            runs = [(mode, ['--cuda'] if args.cuda else []) for mode in args.modes]
            if args.device_map:
                runs.append(('stream', ['--device_map', 'auto']))
            for mode, flags in runs:
                extra, per_point = run_mode(folder, mode, work, args.source, size, flags)
                cells.append(f'{(extra - activations) / model_bytes:5.2f}x ({extra / model_bytes:4.2f}x) '
                             f'{per_point:5.3g} s/pt')
            print(f'{size:>6} {model_bytes / 1e9:6.3f}GB {activations / model_bytes:6.2f}x '
                  + ' '.join(f'{c:>24}' for c in cells), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
