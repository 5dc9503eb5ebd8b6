"""Hessian spectrum speed and accuracy, side by side in one run: this suite against PyHessian.

On a digits CNN (scikit-learn's bundled digits, a few SGD steps; the Hessian over its weights with
dim > 1, 1,864 of them, as plot_hessian_eigen.py takes it), with the dense Hessian as ground truth:

  (a) Hessian-vector products per second: the double back-propagation path (MeanLossHessian.hvp,
      one vector per pass) against forward-over-reverse products batched with vmap (hvp_block)
  (b) the top eigenvalue and the trace: PyHessian 0.1 at its defaults (power iteration and
      Hutchinson, both to a relative tolerance of 1e-3 between iterations), and this suite's
      Lanczos (full reorthogonalization, stopped on its residuals) and Hutch++ (the top eigenpair deflated, blocks of products) at their
      defaults and at a cheaper setting; time, products and error against the dense values

PyHessian is the pip package ``pyhessian`` 0.1, installed for this benchmark only (never in
requirements.txt): ``pip install --no-deps --target benchmarks/out/pyhessian pyhessian==0.1``;
the benchmark looks there (or wherever --pyhessian_path points) and skips its rows without it.

    python benchmarks/bench_spectrum.py [--threads 2] [--json benchmarks/out/bench_spectrum.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dataloader  # noqa: E402
import hessian  # noqa: E402
import spectrum  # noqa: E402
from cli import DefaultsHelpFormatter  # noqa: E402
from digits.models import MODELS  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('bench_spectrum.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='cnn', choices=sorted(MODELS), help='digits model')
    parser.add_argument('--train_steps', default=60, type=int, help='SGD steps before measuring')
    parser.add_argument('--threads', default=2, type=int, help='torch threads, for both tools')
    parser.add_argument('--hvps', default=16, type=int, help='products timed per path in (a)')
    parser.add_argument('--num_samples', default=None, type=int, help='use only the first N training digits '
                        '(default: all 1,438; the smoke test uses a few)')
    parser.add_argument('--pyhessian_path', default=os.path.join(ROOT, 'benchmarks', 'out', 'pyhessian'),
                        help='folder holding the pyhessian package (pip install --no-deps --target ...)')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_spectrum.json'),
                        help='where to write the results')
    return parser


def trained_model(name, steps):
    torch.manual_seed(0)
    net = MODELS[name]()
    data = dataloader.load_digits(train=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(data), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(data.normalize(data.inputs[idx])), data.targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), data


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def products_per_second(operator, count):
    vectors = np.random.default_rng(0).standard_normal((count, operator.size))
    operator.hvp(vectors[0])                            # warm up both paths
    operator.hvp_block(vectors[:2])
    _, single = timed(lambda: [operator.hvp(v) for v in vectors])
    _, block = timed(lambda: operator.hvp_block(vectors))
    return count / single, count / block


def pyhessian_rows(path, net, data, exact):
    if not os.path.isdir(os.path.join(path, 'pyhessian')):
        return [], f'PyHessian not found under {path} (pip install --no-deps --target {path} pyhessian==0.1)'
    sys.path.insert(0, path)
    from pyhessian import hessian as PyHessian
    # The same parameters as ours: PyHessian takes every parameter that requires grad.
    for p in net.parameters():
        p.requires_grad_(p.dim() > 1)
    inputs, targets = data.normalize(data.inputs), data.targets
    tool = PyHessian(net, torch.nn.CrossEntropyLoss(), data=(inputs, targets), cuda=False)
    torch.manual_seed(0)
    (eigenvalues, _), eig_seconds = timed(lambda: tool.eigenvalues(top_n=1))
    torch.manual_seed(0)
    traces, trace_seconds = timed(lambda: tool.trace())
    for p in net.parameters():
        p.requires_grad_(True)
    return [{'tool': 'PyHessian 0.1 defaults', 'top_eig': float(eigenvalues[0]), 'eig_seconds': eig_seconds,
             'eig_rel_error': abs(eigenvalues[0] - exact['top']) / abs(exact['top']),
             'trace': float(np.mean(traces)), 'trace_seconds': trace_seconds, 'trace_products': len(traces),
             'trace_rel_error': abs(np.mean(traces) - exact['trace']) / abs(exact['trace'])}], ''


def suite_row(label, operator, exact, eig_tol, trace_hvps):
    before = operator.hvp_count
    (values, vectors, _), eig_seconds = timed(lambda: spectrum.top_eigenpairs(operator.hvp, operator.size, 1, eig_tol))
    eig_products = operator.hvp_count - before
    before = operator.hvp_count
    (trace, _), trace_seconds = timed(lambda: spectrum.hutch_plus_plus(
        operator.hvp, operator.size, trace_hvps, np.random.default_rng(0), matmat=operator.hvp_block,
        deflate=(values, vectors)))
    return {'tool': label, 'top_eig': float(values[0]), 'eig_seconds': eig_seconds, 'eig_products': eig_products,
            'eig_rel_error': abs(values[0] - exact['top']) / abs(exact['top']),
            'trace': trace, 'trace_seconds': trace_seconds, 'trace_products': operator.hvp_count - before,
            'trace_rel_error': abs(trace - exact['trace']) / abs(exact['trace'])}


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    torch.set_num_threads(opts.threads)
    net, data = trained_model(opts.model, opts.train_steps)
    if opts.num_samples:
        data = data.subset(range(min(opts.num_samples, len(data))))
    operator = hessian.MeanLossHessian(net, data, 'crossentropy', batch_size=len(data))
    dense = operator.hvp_block(np.eye(operator.size))
    eigenvalues = np.linalg.eigvalsh((dense + dense.T) / 2)
    exact = {'top': float(eigenvalues[-1]), 'trace': float(np.trace(dense))}
    single, block = products_per_second(operator, opts.hvps)
    rows = [suite_row('this suite, defaults (Lanczos tol 1e-6, Hutch++ 150)', operator, exact,
                      spectrum.DEFAULT_EIG_TOL, spectrum.DEFAULT_TRACE_HVPS),
            suite_row('this suite, Lanczos tol 1e-3, Hutch++ 30', operator, exact, 1e-3, 30)]
    others, note = pyhessian_rows(opts.pyhessian_path, net, data, exact)
    rows = others + rows
    results = {'model': opts.model, 'parameters': operator.size, 'samples': len(data), 'threads': opts.threads,
               'exact': exact, 'hvp_per_second': {'double backward, one vector': single,
                                                  'forward-over-reverse, vmap block': block},
               'rows': rows, 'note': note}
    print(f'digits {opts.model}, Hessian over {operator.size} weights, {len(data)} samples, {opts.threads} threads; '
          f'dense: top eigenvalue {exact["top"]:.6g}, trace {exact["trace"]:.6g}')
    print(f'Hessian-vector products per second: double backward {single:.1f}, vmap forward-over-reverse '
          f'{block:.1f} ({block / single:.2f}x)')
    print(f'{"":52} {"top eig":>9} {"rel err":>8} {"s":>6} {"trace":>9} {"rel err":>8} {"HVPs":>5} {"s":>6} {"total s":>8}')
    for row in rows:
        print(f'{row["tool"]:52} {row["top_eig"]:9.5g} {row["eig_rel_error"]:8.1e} {row["eig_seconds"]:6.2f} '
              f'{row["trace"]:9.5g} {row["trace_rel_error"]:8.1e} {row["trace_products"]:5d} {row["trace_seconds"]:6.2f} '
              f'{row["eig_seconds"] + row["trace_seconds"]:8.2f}')
    if note:
        print(note)
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    return results


if __name__ == '__main__':
    main()
