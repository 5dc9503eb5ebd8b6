"""What keeping diverged points diverged costs the fused, folded model: seconds per grid point with
the guard (a fused call takes oneDNN's ReLU post-op only where its pre-activation provably cannot
overflow, compute/bn_folding.py) against the same calls with the post-op always taken (the
behaviour before the guard, which turns an overflow's NaN into finite numbers), side by side in one
run, in interleaved repeats.

A point is what plot_surface.py does at a grid point of the folded channels_last model: move the
weights along a filter-normalized direction, refold, and run every batch of the data through it.

    python benchmarks/bench_divergence_guard.py --model resnet20 --num_images 2000 --batch_size 128
"""
import argparse
import contextlib
import json
import os
import statistics
import time
from unittest import mock

import torch

from losslandscape.cli.parsing import DefaultsHelpFormatter
from losslandscape.compute import bn_folding
from losslandscape.directions import moving, normalization, subsets
from losslandscape.models.cifar10.zoo import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser('bench_divergence_guard.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='resnet20', help='CIFAR-10 zoo model')
    parser.add_argument('--num_images', default=2000, type=int, help='CIFAR-shaped images per point')
    parser.add_argument('--batch_size', default=128, type=int, help='images per forward pass')
    parser.add_argument('--points', default=3, type=int, help='grid points per timed repeat')
    parser.add_argument('--repeats', default=8, type=int, help='interleaved repeats of each variant (median reported)')
    parser.add_argument('--threads', default=None, type=int, help='torch threads (default: torch\'s choice)')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_divergence_guard.json'),
                        help='where to write the results')
    return parser


def always_finite(self, x, other):
    """The fused call as before the guard: the ReLU post-op whatever the pre-activation."""
    return True


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not bn_folding.fusion_available():
        raise SystemExit('this PyTorch has no oneDNN fused convolution: nothing to compare')
    torch.manual_seed(0)
    net = MODELS[opts.model]().eval().to(memory_format=torch.channels_last)
    images = torch.randn(opts.num_images, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    folding = bn_folding.BatchNormFolding(net)
    base = subsets.get_base(net, 'weights')
    direction = normalization.make_random_direction(base, torch.Generator().manual_seed(1), 'filter', 'biasbn')

    def seconds_per_point():
        start = time.perf_counter()
        for k in range(opts.points):
            moving.move(net, 'weights', base, direction, None, 0.1 * (k + 1))
            folding.refresh()
            with torch.inference_mode():
                for i in range(0, opts.num_images, opts.batch_size):
                    folding.module(images[i:i + opts.batch_size])
        return (time.perf_counter() - start) / opts.points

    variants = {'guarded': None, 'post-op always': always_finite}
    times = {name: [] for name in variants}
    seconds_per_point()   # warm-up: kernels made, memory mapped
    for repeat in range(opts.repeats):
        # Alternating which goes first, so a drift of the machine hits both alike.
        for name in (list(variants) if repeat % 2 == 0 else list(variants)[::-1]):
            patch = variants[name]
            with mock.patch.object(bn_folding.FusedConv, '_pre_activation_is_finite', patch) if patch \
                    else contextlib.nullcontext():
                times[name].append(seconds_per_point())
    results = {'model': opts.model, 'num_images': opts.num_images, 'batch_size': opts.batch_size,
               'threads': torch.get_num_threads(), 'fused_calls': folding.num_fused,
               'seconds_per_point': {name: statistics.median(t) for name, t in times.items()}}
    results['guard_cost'] = results['seconds_per_point']['guarded'] / results['seconds_per_point']['post-op always']
    print(f"{opts.model}, {opts.num_images} images, batch {opts.batch_size}, {results['threads']} threads, "
          f"{folding.num_fused} fused calls, median of {opts.repeats}:")
    for name, seconds in results['seconds_per_point'].items():
        print(f'  {name:16s} {seconds:.4f} s/point')
    print(f"  the guard's cost: {results['guard_cost']:.3f}x")
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    return results


if __name__ == '__main__':
    main()
