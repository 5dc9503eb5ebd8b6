"""What the standard errors and the paired rise cost a point: one evaluation of the objective with
them (objective.evaluate with the centre's units, as every grid point now runs) against the
objective's sums alone (what a point ran before them), interleaved: the median and the minimum of
--repeats (on a machine shared with other work the minimum is the steadier figure of the cost itself).

    python benchmarks/bench_standard_errors.py --model resnet20 --num_images 2000
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from losslandscape._testing.fake_cifar10 import write_fake_cifar10
from losslandscape.cli.parsing import DefaultsHelpFormatter
from losslandscape.data import batch_sources
from losslandscape.models.cifar10.zoo import MODELS
from losslandscape.objectives import objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser('bench_standard_errors.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='resnet20', help='CIFAR-10 zoo model')
    parser.add_argument('--num_images', default=2000, type=int, help='images evaluated per point')
    parser.add_argument('--batch_size', default=128, type=int, help='evaluation batch size')
    parser.add_argument('--repeats', default=9, type=int, help='evaluations of each kind (median reported)')
    parser.add_argument('--threads', default=None, type=int, help='torch threads (default: torch\'s choice)')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_standard_errors.json'))
    return parser


@torch.inference_mode()
def sums_only(net, source, the_objective):
    """A point as it was evaluated before standard errors: the batch sums, read once, finalized."""
    totals = {}
    for batch in source.batches():
        for key, value in the_objective.sums(net, batch).items():
            totals[key] = totals[key] + value if key in totals else value
    return the_objective.finalize({k: v.item() if torch.is_tensor(v) else float(v) for k, v in totals.items()})


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    the_objective = objective.ClassificationObjective('crossentropy')
    with tempfile.TemporaryDirectory(prefix='bench_stderr_') as workdir:
        write_fake_cifar10(workdir, num_train=opts.num_images, num_test=10)
        source = batch_sources.batch_source('cifar10', workdir, True, opts.batch_size, 'cpu')
    torch.manual_seed(0)
    net = MODELS[opts.model]().eval()
    _, centre = objective.evaluate_centre(net, source, the_objective)
    kinds = {'sums alone (before)': lambda: sums_only(net, source, the_objective),
             'with standard errors and rise': lambda: objective.evaluate(net, source, the_objective, centre=centre)}
    seconds = {name: [] for name in kinds}
    for repeat in range(opts.repeats):
        order = list(kinds) if repeat % 2 == 0 else list(reversed(kinds))   # neither always goes first
        for name in order:
            start = time.perf_counter()
            kinds[name]()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    minima = {name: min(values) for name, values in seconds.items()}
    before, after = medians.values()
    results = {'model': opts.model, 'num_images': opts.num_images, 'batch_size': opts.batch_size,
               'threads': torch.get_num_threads(), 'repeats': opts.repeats, 'seconds_per_point': medians,
               'min_seconds_per_point': minima, 'ratio': after / before,
               'ratio_of_minima': list(minima.values())[1] / list(minima.values())[0]}
    for name in kinds:
        print(f'{name:<32}{medians[name]:>9.4f} s per point (median), {minima[name]:.4f} (minimum)')
    print(f'ratio {after / before:.4f} (medians), {results["ratio_of_minima"]:.4f} (minima) ({opts.model}, '
          f'{opts.num_images} images, batch {opts.batch_size}, {torch.get_num_threads()} threads, {opts.repeats} repeats)')
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    return results


if __name__ == '__main__':
    main()
