"""Hessian spectrum speed and accuracy, side by side in one run: this suite against PyHessian.

On a digits CNN (scikit-learn's bundled digits, a few SGD steps; the Hessian over its weights with
dim > 1, 1,864 of them, as plot_hessian_eigen.py takes it), with the dense Hessian as ground truth:

  (a) Hessian-vector products per second: double back-propagation recomputing the gradient
      graph at every product (MeanLossHessian with retain_graphs=False), the gradient graph kept
      and reused (the default where memory allows; what PyHessian does too), and forward-over-
      reverse products batched with vmap (hvp_block without retained graphs)
  (b) the top eigenvalue and the trace over --seeds random seeds, so that accuracy means the
      root-mean-square relative error of each estimator, not one lucky draw: PyHessian 0.1 at its
      defaults (power iteration and Hutchinson, both to a relative tolerance of 1e-3 between
      iterations), and this suite's Lanczos (stopped on its residuals) with krylov_trace (exact on
      the solve's Krylov space, probes of the rest) at several trace budgets, and Hutch++ for
      comparison; the verdict is the fastest row of this suite whose errors are at most
      PyHessian's, against PyHessian's mean time

PyHessian is the pip package ``pyhessian`` 0.1, installed for this benchmark only (never a
dependency of the suite): ``pip install --no-deps --target benchmarks/out/pyhessian pyhessian==0.1``;
the benchmark looks there (or wherever --pyhessian_path points) and skips its rows without it.

    python benchmarks/bench_spectrum.py [--threads 2] [--seeds 10] [--json benchmarks/out/bench_spectrum.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from losslandscape.cli.parsing import DefaultsHelpFormatter
from losslandscape.curvature import hessian, spectrum
from losslandscape.data import datasets, user_code
from losslandscape.models.digits import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser('bench_spectrum.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='cnn', choices=sorted(MODELS), help='digits model')
    parser.add_argument('--train_steps', default=60, type=int, help='SGD steps before measuring')
    parser.add_argument('--threads', default=2, type=int, help='torch threads, for both tools')
    parser.add_argument('--hvps', default=16, type=int, help='products timed per path in (a)')
    parser.add_argument('--seeds', default=10, type=int, help='random seeds per estimator in (b)')
    parser.add_argument('--eig_tol', default=1e-3, type=float, help='Lanczos tolerance of the cheap rows in (b)')
    parser.add_argument('--trace_budgets', default=[8, 12, 16, 24], type=int, nargs='+',
                        help='krylov_trace products (beyond the eigen solve\'s) of the rows in (b)')
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
    data = datasets.load_digits(train=True)
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


def products_per_second(net, data, count):
    """{path: products per second} over ``count`` random vectors, each path warmed up first."""
    vectors = np.random.default_rng(0).standard_normal((count, sum(p.numel() for p in hessian.hessian_parameters(net))))
    recompute = hessian.MeanLossHessian(net, data, 'crossentropy', batch_size=len(data), retain_graphs=False)
    retained = hessian.MeanLossHessian(net, data, 'crossentropy', batch_size=len(data), retain_graphs=True)
    paths = {'double backward, graph rebuilt per product': lambda: [recompute.hvp(v) for v in vectors],
             'double backward, gradient graph kept': lambda: [retained.hvp(v) for v in vectors],
             'forward-over-reverse, vmap blocks of 8': lambda: recompute.hvp_block(vectors)}
    recompute.hvp(vectors[0]), retained.hvp(vectors[0]), recompute.hvp_block(vectors[:2])
    return {name: count / min(timed(path)[1] for _ in range(2)) for name, path in paths.items()}


def rms(values):
    return float(np.sqrt(np.mean(np.square(values))))


def summary(label, runs, exact):
    """One table row from per-seed runs [{'top_eig', 'trace', 'products', 'seconds'}]."""
    return {'tool': label, 'seeds': len(runs),
            'eig_rms_rel_error': rms([(r['top_eig'] - exact['top']) / exact['top'] for r in runs]),
            'trace_rms_rel_error': rms([(r['trace'] - exact['trace']) / exact['trace'] for r in runs]),
            'products': float(np.mean([r['products'] for r in runs])),
            'seconds': float(np.mean([r['seconds'] for r in runs])), 'runs': runs}


def pyhessian_row(path, net, data, exact, seeds):
    if not os.path.isdir(os.path.join(path, 'pyhessian')):
        return None, f'PyHessian not found under {path} (pip install --no-deps --target {path} pyhessian==0.1)'
    user_code.import_user_module('pyhessian', folder=path)   # from that folder, sys.path unchanged
    module = sys.modules['pyhessian.hessian']     # the package exports the class under the module's name
    PyHessian = module.hessian
    # Its products, counted: every one goes through the hessian_vector_product it imports.
    counted, product = [0], module.hessian_vector_product

    def counting_product(*args, **kwargs):
        counted[0] += 1
        return product(*args, **kwargs)
    module.hessian_vector_product = counting_product
    # The same parameters as ours: PyHessian takes every parameter that requires grad.
    for p in net.parameters():
        p.requires_grad_(p.dim() > 1)
    inputs, targets = data.normalize(data.inputs), data.targets
    runs = []
    try:
        for seed in seeds:
            torch.manual_seed(seed)
            counted[0] = 0
            start = time.perf_counter()
            tool = PyHessian(net, torch.nn.CrossEntropyLoss(), data=(inputs, targets), cuda=False)
            eigenvalues, _ = tool.eigenvalues(top_n=1)
            traces = tool.trace()
            runs.append({'top_eig': float(eigenvalues[0]), 'trace': float(np.mean(traces)),
                         'seconds': time.perf_counter() - start, 'products': counted[0], 'trace_probes': len(traces)})
    finally:
        module.hessian_vector_product = product
        for p in net.parameters():
            p.requires_grad_(True)
    row = summary('PyHessian 0.1 defaults (power iteration, Hutchinson; tol 1e-3)', runs, exact)
    row['trace_probes'] = float(np.mean([r['trace_probes'] for r in runs]))
    return row, ''


def suite_row(label, net, data, exact, seeds, eig_tol, trace_hvps, estimator='krylov'):
    """Top eigenvalue (Lanczos, k = 1) and trace (krylov_trace reusing its basis, or Hutch++ with
    the eigenpair deflated) from a fresh operator per seed, as hessian_spectrum.py makes them."""
    runs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        operator = hessian.MeanLossHessian(net, data, 'crossentropy', batch_size=len(data))
        basis = spectrum.Lanczos(operator.hvp, rng.standard_normal(operator.size))
        values, vectors, _ = spectrum.top_eigenpairs(operator.hvp, operator.size, 1, eig_tol, lanczos=basis)
        if estimator == 'krylov':
            trace, _ = spectrum.krylov_trace(operator.hvp, operator.size, trace_hvps, rng, matmat=operator.hvp_block,
                                             lanczos=basis)
        else:
            trace, _ = spectrum.hutch_plus_plus(operator.hvp, operator.size, trace_hvps, rng,
                                                matmat=operator.hvp_block, deflate=(values, vectors))
        runs.append({'top_eig': float(values[0]), 'trace': trace, 'seconds': time.perf_counter() - start,
                     'products': operator.hvp_count})
    return summary(label, runs, exact)


def verdict(rows):
    """The fastest row of this suite at least as exact as PyHessian's on both numbers, and its speed-up."""
    reference = next((row for row in rows if row['tool'].startswith('PyHessian')), None)
    if reference is None:
        return None
    matching = [row for row in rows if row is not reference
                and row['eig_rms_rel_error'] <= reference['eig_rms_rel_error']
                and row['trace_rms_rel_error'] <= reference['trace_rms_rel_error']]
    if not matching:
        return {'row': None, 'speedup': None}
    best = min(matching, key=lambda row: row['seconds'])
    return {'row': best['tool'], 'speedup': reference['seconds'] / best['seconds']}


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
    speeds = products_per_second(net, data, opts.hvps)
    seeds = range(opts.seeds)
    reference, note = pyhessian_row(opts.pyhessian_path, net, data, exact, seeds)
    rows = [] if reference is None else [reference]
    for budget in opts.trace_budgets:
        rows.append(suite_row(f'this suite, Lanczos tol {opts.eig_tol:g}, krylov_trace {budget}', net, data, exact,
                              seeds, opts.eig_tol, budget))
    rows.append(suite_row(f'this suite, Lanczos tol {opts.eig_tol:g}, Hutch++ {max(opts.trace_budgets)}', net, data,
                          exact, seeds, opts.eig_tol, max(opts.trace_budgets), estimator='hutch++'))
    rows.append(suite_row(f'this suite, defaults (Lanczos tol {spectrum.DEFAULT_EIG_TOL:g}, krylov_trace '
                          f'{spectrum.DEFAULT_TRACE_HVPS})', net, data, exact, seeds[:1] if len(seeds) else seeds,
                          spectrum.DEFAULT_EIG_TOL, spectrum.DEFAULT_TRACE_HVPS))
    results = {'model': opts.model, 'parameters': operator.size, 'samples': len(data), 'threads': opts.threads,
               'exact': exact, 'hvp_per_second': speeds, 'rows': rows, 'verdict': verdict(rows), 'note': note}
    print(f'digits {opts.model}, Hessian over {operator.size} weights, {len(data)} samples, {opts.threads} threads; '
          f'dense: top eigenvalue {exact["top"]:.6g}, trace {exact["trace"]:.6g}')
    print('Hessian-vector products per second: ' + '; '.join(f'{name} {rate:.1f}' for name, rate in speeds.items()))
    print(f'{"top eigenvalue + trace, mean over seeds":68} {"seeds":>5} {"eig rms":>8} {"trace rms":>9} '
          f'{"HVPs":>6} {"s":>6}')
    for row in rows:
        products = f'{row["products"]:.1f}'
        print(f'{row["tool"]:68} {row["seeds"]:5d} {row["eig_rms_rel_error"]:8.1e} {row["trace_rms_rel_error"]:9.1e} '
              f'{products:>6} {row["seconds"]:6.3f}')
    if results['verdict'] is not None:
        found = results['verdict']
        print('no row of this suite is as exact as PyHessian on both numbers' if found['row'] is None else
              f'as exact as PyHessian or more, fastest: {found["row"]}: {found["speedup"]:.2f}x PyHessian\'s speed')
    if note:
        print(note)
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    return results


if __name__ == '__main__':
    main()
