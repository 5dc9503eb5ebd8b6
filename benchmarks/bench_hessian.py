"""Speed of hessian.py: Hessian-vector products per second and grid points per minute.

On fake CIFAR-sized data (random uint8 3x32x32 images held in a datasets.CachedDataset, CIFAR-10
normalisation), with a freshly initialised zoo model whose BatchNorm statistics are first set by one
pass over that data. Grid points per minute is measured when --points > 0 (that many warm-started
points along a filter-normalised random direction, as plot_hessian_eigen.py solves them); with
--points 0 (the default, so a CPU run stays short) it is estimated from the products per second and
2 (ncv + 1) products per point -- the fewest two ARPACK solves can take, and what they take with
the default settings on the test networks.

Then, with --maps (default: both), eigenvalue maps solved cold (--eig_solver cold: ARPACK from
the same seeded vector at every point) against warm (the default: each point from the previous
point's eigenvectors), each through the package's own entry points: products per point, seconds
per point (the grid loop's, as the run's line reports it) and the largest difference between the
two maps relative to |max_eig|. 'digits': the digits CNN (cnn_bn) trained 8 epochs as demo.sh
trains it, a 5x5 map over +-0.5 along filter-normalized directions, --batch_size 1438 (the whole
training set in one batch); 'resnet20': a freshly initialised resnet20 on 500 fake CIFAR-sized
images, a 3x3 map over +-0.5 likewise.

    python benchmarks/bench_hessian.py --model resnet20 --num_images 256 --json bench_hessian.json
    python benchmarks/bench_hessian.py --maps digits
"""
import argparse
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import losslandscape
from losslandscape import plot_hessian_eigen
from losslandscape.curvature import hessian
from losslandscape.data import datasets
from losslandscape.directions import moving, normalization, subsets
from losslandscape.io import hdf5_layout
from losslandscape.models import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POINT_SPACING = 0.05   # distance between the measured grid points along the direction


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='resnet20', help='a CIFAR-10 zoo model (default %(default)s)')
    parser.add_argument('--num_images', default=256, type=int, help='fake images in the dataset (default %(default)s)')
    parser.add_argument('--batch_size', default=128, type=int, help='batch size of the products (default %(default)s)')
    parser.add_argument('--repeats', default=3, type=int, help='timed products after one warm-up (default %(default)s)')
    parser.add_argument('--points', default=0, type=int,
                        help='grid points to actually solve for the points/minute figure; 0: estimate it')
    parser.add_argument('--eig_tol', default=hessian.DEFAULT_EIG_TOL, type=float,
                        help='ARPACK tolerance of the timed eigenvalue solves, as plot_hessian_eigen.py (default %(default)s)')
    parser.add_argument('--eig_ncv', default=hessian.DEFAULT_EIG_NCV, type=int,
                        help='Lanczos vectors per restart, as plot_hessian_eigen.py (default %(default)s)')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='where to time (default %(default)s)')
    parser.add_argument('--threads', default=None, type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--seed', default=0, type=int, help='seed of the random model and data (default %(default)s)')
    parser.add_argument('--json', default='', help='also write the numbers to this JSON file')
    parser.add_argument('--maps', nargs='*', default=list(MAPS), choices=MAPS,
                        help='eigenvalue maps to solve cold and warm (default: %(default)s; --maps alone: none)')
    return parser


MAPS = ('digits', 'resnet20')
# The maps' common flags: filter-normalized directions without biases and BatchNorm, +-0.5.
MAP_DIRECTIONS = {'xnorm': 'filter', 'xignore': 'biasbn', 'ynorm': 'filter', 'yignore': 'biasbn'}
DIGITS_EPOCHS = 8
DIGITS_BATCH = 1438            # the digits training set: one batch
RESNET_IMAGES = 500


def loop_seconds(stdout):
    """The grid loop's seconds from the run's line ('... N points computed in S s, ...')."""
    return float(re.search(r'points computed in ([0-9.e+-]+) s', stdout).group(1))


def summarize_map(surface, seconds):
    return {'products_per_point': float(surface.values[hdf5_layout.HVP_COUNT].mean()),
            'seconds_per_point': seconds / surface.values[hdf5_layout.MAX_EIG].size,
            'eig_solve': surface.values[hdf5_layout.EIG_SOLVE].ravel().tolist()}


def compare(maps):
    """{'cold': ..., 'warm': ..., 'max_rel_difference': {...}} of two Surfaces (cold, warm)."""
    (cold, cold_seconds), (warm, warm_seconds) = maps
    scale = np.abs(cold.values[hdf5_layout.MAX_EIG])
    differences = {name: float((np.abs(warm.values[name] - cold.values[name]) / scale).max())
                   for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)}
    return {'cold': summarize_map(cold, cold_seconds), 'warm': summarize_map(warm, warm_seconds),
            'max_difference_over_abs_max_eig': differences}


def digits_map(folder, threads):
    """The digits CNN map, cold then warm: [(Surface, loop seconds)] * 2."""
    save = os.path.join(folder, 'trained')
    subprocess.run([sys.executable, '-m', 'losslandscape.train', '--dataset', 'digits', '--model', 'cnn_bn',
                    '--epochs', str(DIGITS_EPOCHS), '--batch_size', '64', '--lr', '0.05', '--save', save],
                   check=True, capture_output=True)
    model = next(os.path.join(root, name) for root, _, names in os.walk(save) for name in names
                 if name == f'model_{DIGITS_EPOCHS}.t7')
    results = []
    for solver in ('cold', 'warm'):
        surf = os.path.join(folder, f'digits_{solver}.h5')
        argv = ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model, '--x=-0.5:0.5:5', '--y=-0.5:0.5:5',
                *[f'--{k}={v}' for k, v in MAP_DIRECTIONS.items()], '--batch_size', str(DIGITS_BATCH),
                '--eig_solver', solver, '--surf_file', surf, *(['--threads', str(threads)] if threads else [])]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            plot_hessian_eigen.main(argv)
        results.append((hdf5_layout.read_surface(surf), loop_seconds(out.getvalue())))
    return results


def resnet_map(folder, args):
    """resnet20 on RESNET_IMAGES fake CIFAR images (BatchNorm statistics from one pass over them),
    a 3x3 map, cold then warm, through losslandscape.hessian_eigen."""
    torch.manual_seed(args.seed)
    net = loading.build('cifar10', 'resnet20')
    data = fake_cifar(RESNET_IMAGES, args.seed, torch.device('cpu'))
    set_batchnorm_statistics(net, data, args.batch_size)
    dataset = torch.utils.data.TensorDataset(data.normalize(data.inputs), data.targets)
    results = []
    for solver in ('cold', 'warm'):
        surf = os.path.join(folder, f'resnet20_{solver}.h5')
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            surface = losslandscape.hessian_eigen(net, dataset, x='-0.5:0.5:3', y='-0.5:0.5:3', batch_size=args.batch_size,
                                                  eig_solver=solver, surf_file=surf, threads=args.threads,
                                                  **MAP_DIRECTIONS)
        results.append((surface, loop_seconds(out.getvalue())))
    return results


def fake_cifar(num_images, seed, device):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (num_images,), generator=gen)
    scale, shift = datasets._affine(datasets.CIFAR10_MEAN, datasets.CIFAR10_STD, 255.0, raw_data=False)
    return datasets.CachedDataset(images, labels, 10, scale, shift).to(device)


@torch.no_grad()
def set_batchnorm_statistics(net, data, batch_size):
    """Running statistics from one pass over the data: eval mode then sees sensible activations."""
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None          # cumulative average over the pass
    net.train()
    for inputs, _ in data.batches(batch_size):
        net(inputs)
    net.eval()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    for flag in ('num_images', 'batch_size', 'repeats'):
        if getattr(args, flag) < 1:
            raise SystemExit(f'--{flag} must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    net = loading.build('cifar10', args.model).to(device)
    data = fake_cifar(args.num_images, args.seed, device)
    set_batchnorm_statistics(net, data, args.batch_size)
    operator = hessian.MeanLossHessian(net, data, 'crossentropy', args.batch_size)
    vector = np.random.default_rng(args.seed).standard_normal(operator.size)

    operator.hvp(vector)                    # warm-up: allocator, kernels, lazy initialisation
    sync(device)
    started = time.perf_counter()
    for _ in range(args.repeats):
        operator.hvp(vector)
    sync(device)
    hvp_seconds = (time.perf_counter() - started) / args.repeats
    hvps_per_second = 1.0 / hvp_seconds

    result = {
        'model': args.model, 'parameters_dim_gt_1': operator.size, 'num_images': args.num_images,
        'batch_size': args.batch_size, 'device': str(device), 'threads': torch.get_num_threads(),
        'eig_tol': args.eig_tol, 'eig_ncv': args.eig_ncv,
        'seconds_per_hvp': hvp_seconds, 'hvps_per_second': hvps_per_second,
        'images_per_second_hvp': args.num_images * hvps_per_second,
    }
    if args.points > 0:
        base = subsets.get_weights(net)
        direction = normalization.make_random_direction(base, torch.Generator().manual_seed(args.seed), 'filter',
                                                      'biasbn')
        direction = [d.to(device) for d in direction]
        tracker = hessian.EigenTracker(tol=args.eig_tol, ncv=args.eig_ncv)
        counts, eigenvalues = [], []
        started = time.perf_counter()
        for i in range(args.points):
            moving.set_weights(net, base, direction, None, i * POINT_SPACING)
            solved = tracker.solve(operator)
            counts.append(solved.hvp_count)
            eigenvalues.append((solved.max_eig, solved.min_eig))
        sync(device)
        point_seconds = (time.perf_counter() - started) / args.points
        result.update(points_per_minute=60.0 / point_seconds, points_per_minute_source='measured',
                      hvps_per_point=float(np.mean(counts)), hvp_counts=counts, eigenvalues=eigenvalues)
    else:
        per_point = 2 * (args.eig_ncv + 1)
        result.update(points_per_minute=60.0 * hvps_per_second / per_point,
                      points_per_minute_source='estimated', hvps_per_point=per_point)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.maps:
            maps = digits_map(folder, args.threads) if name == 'digits' else resnet_map(folder, args)
            result[f'{name}_map'] = row = compare(maps)
            print(f'{name} map, cold vs warm: {row["cold"]["products_per_point"]:.1f} vs '
                  f'{row["warm"]["products_per_point"]:.1f} products per point, {row["cold"]["seconds_per_point"]:.2f} '
                  f'vs {row["warm"]["seconds_per_point"]:.2f} s per point; largest difference / |max_eig|: '
                  f'max_eig {row["max_difference_over_abs_max_eig"]["max_eig"]:.2e}, '
                  f'min_eig {row["max_difference_over_abs_max_eig"]["min_eig"]:.2e}', flush=True)
    result['versions'] = {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__}

    print(f'{args.model} on {args.num_images} fake CIFAR images ({device}, {result["threads"]} threads, batch '
          f'{args.batch_size}): {hvps_per_second:.3f} Hessian-vector products/s ({hvp_seconds:.2f} s each); '
          f'{result["points_per_minute"]:.3f} grid points/min ({result["points_per_minute_source"]}; '
          f'{result["hvps_per_point"]:g} products per point)')
    print(json.dumps(result))
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == '__main__':
    main()
