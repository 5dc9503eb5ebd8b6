"""Shared fixtures: tiny trained digits models saved as checkpoints, ways to run the scripts, and the
checks every bad-input test makes."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from losslandscape.data import datasets
from losslandscape.models.digits import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(1)   # deterministic, and fair to the other test process on a 2-core box


@pytest.fixture(autouse=True)
def private_timing_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty cache of timed compute configurations of its own
    (timing_cache.py), so no test sees another's timings or the developer's."""
    monkeypatch.setenv('LANDSCAPE_CACHE_DIR', str(tmp_path_factory.mktemp('timing_cache')))


def train_briefly(name, seed, steps=40, batch_size=64, lr=0.1):
    """A digits model after a few SGD steps: trained enough that BN statistics and weights are
    not at their initial values, in well under a second."""
    torch.manual_seed(seed)
    net = MODELS[name]()
    data = datasets.load_digits(train=True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x, y = data.normalize(data.inputs[idx]), data.targets[idx]
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope='session')
def checkpoints(tmp_path_factory):
    """{'cnn_bn': path, 'cnn_bn_b': path (another seed), 'mlp': path} in the original's format."""
    folder = tmp_path_factory.mktemp('checkpoints')
    paths = {}
    for key, name, seed in (('cnn_bn', 'cnn_bn', 0), ('cnn_bn_b', 'cnn_bn', 1), ('cnn_bn_c', 'cnn_bn', 2),
                            ('mlp', 'mlp', 0)):
        net = train_briefly(name, seed)
        path = folder / f'{key}.t7'
        torch.save({'state_dict': net.state_dict(), 'epoch': 1, 'acc': 0.0}, path)
        paths[key] = str(path)
    return paths


def script_command(script):
    """How a user runs ``script`` ('plot_surface.py'): the file where the checkout keeps one for
    users of the original code, else the package's module (``-m losslandscape.hessian_spectrum``)."""
    path = os.path.join(ROOT, script)
    return [path] if os.path.exists(path) else ['-m', 'losslandscape.' + script.removesuffix('.py')]


def run_script(script, *args, cwd=ROOT, env=None, timeout=300, launcher=()):
    """Run one of the suite's scripts as a user would: returns CompletedProcess (text)."""
    full_env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run([*launcher, sys.executable, *script_command(script), *map(str, args)],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def call_main(main, argv, capsys):
    """Run ``main(argv)`` in this process through cli.run_main; return (exit code, stderr)."""
    from losslandscape.cli.parsing import run_main
    try:
        code = run_main(main, [str(a) for a in argv]) or 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def snapshot(folder):
    """{file name: content hash} of the files in ``folder``: a refused command must leave it equal."""
    return {p: hashlib.sha256(open(os.path.join(folder, p), 'rb').read()).hexdigest()
            for p in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, p))}


def assert_one_line_error(code, err, words):
    """Exit status 2, one line on stderr naming the problem (each of ``words``), no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert 'Traceback' not in err and 'error:' in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
