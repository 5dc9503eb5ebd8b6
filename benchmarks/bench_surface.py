"""Seconds per grid point: this suite's plot_surface path against a naive per-point loop.

Measured side by side in one run, on the same model, data and directions:
  (a) suite    -- run_setup.prepare_run + surface_engine.run_grid with plot_surface's point evaluator (resident
                  uint8 data, normalised per batch, atomic incremental HDF5 writes included);
  (b) naive    -- the usual loop: torchvision CIFAR10 with ToTensor+Normalize through a DataLoader
                  (batch 128, 2 workers), model.eval(), torch.no_grad(), weights set per point;
  (c) floor    -- one plain forward pass over the already-normalised float tensor.
Each lever's row also gives the largest relative change of train_loss it causes over the grid,
against the first lever's surface (give "" first: the default path).
Prints a table (median of --repeats) and writes it as JSON. Fake CIFAR-shaped data is used: the
timing does not depend on the pixel values.

    python benchmarks/bench_surface.py --model resnet20 --num_images 2000 --grid 5 \
        --levers "" "--channels_last --batch_size 32" "--channels_last --batch_size 32 --fold_bn" \
        --mpi_levers "--channels_last --batch_size 32 --fold_bn" --mpi
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hdf5_layout  # noqa: E402
import net_plotter  # noqa: E402
import plot_surface  # noqa: E402
from cifar10.fake_data import write_fake_cifar10  # noqa: E402
from mpi_comm import SerialComm  # noqa: E402
import evaluators  # noqa: E402
from run_setup import RunSettings, prepare_run  # noqa: E402
from surface_engine import run_grid  # noqa: E402
from dataloader import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from cli import DefaultsHelpFormatter  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser('bench_surface.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='resnet20', help='CIFAR-10 zoo model')
    parser.add_argument('--num_images', default=2000, type=int, help='training images evaluated per point')
    parser.add_argument('--grid', default=5, type=int, help='grid points per axis (a GRID x GRID surface)')
    parser.add_argument('--batch_size', default=128, type=int, help='evaluation batch size (suite and floor)')
    parser.add_argument('--repeats', default=3, type=int, help='repeats of each measurement (median reported)')
    parser.add_argument('--threads', default=None, type=int, help='torch threads (default: torch\'s choice)')
    parser.add_argument('--cuda', action='store_true', help='measure on the GPU')
    parser.add_argument('--mpi', action='store_true', help='also measure 1 rank x 1 thread against 2 ranks x 1 thread')
    parser.add_argument('--levers', nargs='*', default=[], help='extra plot_surface.py flags for the suite path, one '
                        'quoted string per variant to compare side by side, e.g. "" "--channels_last --batch_size 32" " --fold_bn" (a lone flag needs the leading space, or argparse takes it for an option of this script)')
    parser.add_argument('--mpi_levers', nargs='*', default=[], help='plot_surface.py flags to time under '
                        '"mpiexec -n 2 ... --mpi --threads 1" too, one quoted string per variant, as rows of the '
                        'same table (the whole machine split into ranks instead of threads)')
    parser.add_argument('--skip_naive', action='store_true', help='skip the (slow) naive baseline')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_surface.json'),
                        help='where to write the results')
    return parser


def surface_args(workdir, model_file, opts, extra=()):
    argv = ['--dataset', 'cifar10', '--datapath', workdir, '--model', opts.model, '--model_file', model_file,
            f'--x=-1:1:{opts.grid}', f'--y=-1:1:{opts.grid}', '--xnorm', 'filter', '--xignore', 'biasbn',
            '--ynorm', 'filter', '--yignore', 'biasbn', '--batch_size', str(opts.batch_size), *extra]
    if opts.cuda:
        argv.append('--cuda')
    if opts.threads:
        argv += ['--threads', str(opts.threads)]   # else prepare_run picks the node's default
    return plot_surface.get_args_parser().parse_args(argv)


def time_suite(workdir, model_file, opts, repeat, lever=''):
    """Seconds per point of the suite's own grid loop (a fresh surface file each repeat)."""
    surf = os.path.join(workdir, f'suite_{repeat}_{abs(hash(lever))}.h5')
    args = surface_args(workdir, model_file, opts, ['--surf_file', surf, *lever.split()])
    run = prepare_run(RunSettings.from_args(args), SerialComm())
    sync(opts)
    start = time.perf_counter()
    run_grid(SerialComm(), run.grid, run.open_writer(run.value_names()), evaluators.make_loss_evaluator(run),
             points_per_call=args.points_per_call)
    sync(opts)
    return (time.perf_counter() - start) / run.grid.num_points, run


def time_naive(workdir, run, opts):
    """The per-point loop most loss-landscape scripts use, on the same model and directions."""
    import torchvision
    import torchvision.transforms as T

    # torchvision refuses batches whose checksums differ from the official ones: let it read the fakes.
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True
    transform = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset = torchvision.datasets.CIFAR10(workdir, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=False, num_workers=2)
    net, criterion = run.net, torch.nn.CrossEntropyLoss()
    points = run.grid.num_points
    sync(opts)
    start = time.perf_counter()
    for k in range(points):
        x, y = run.grid.point(k)
        net_plotter.set_weights(net, run.base, run.xdirection, run.ydirection, x, y)
        net.eval()
        total, correct, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(run.device), targets.to(run.device)
                outputs = net(inputs)
                loss_sum += criterion(outputs, targets).item() * len(targets)
                correct += (outputs.argmax(1) == targets).sum().item()
                total += len(targets)
    sync(opts)
    return (time.perf_counter() - start) / points


def time_floor(run, opts):
    """One forward pass over the already-normalised data: the cost a grid point cannot beat."""
    data, batch_size = run.train_data.data, run.settings.batch_size
    prepared = [data.normalize(data.inputs[i:i + batch_size]) for i in range(0, len(data), batch_size)]
    run.eval_net.eval()
    sync(opts)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in prepared:
            run.eval_net(batch)   # the model as the suite calls it (folded with --fold_bn)
    sync(opts)
    return time.perf_counter() - start


def time_mpi(workdir, model_file, opts, ranks, lever=''):
    """Points per second of the grid loop with ``ranks`` ranks of one thread each."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    surf = os.path.join(workdir, f'mpi_{ranks}_{time.monotonic_ns()}.h5')
    cmd = [mpiexec, '-n', str(ranks), sys.executable, os.path.join(ROOT, 'plot_surface.py'), '--mpi', '--threads', '1',
           '--dataset', 'cifar10', '--datapath', workdir, '--model', opts.model, '--model_file', model_file,
           f'--x=-1:1:{opts.grid}', f'--y=-1:1:{opts.grid}', '--xnorm', 'filter', '--xignore', 'biasbn',
           '--ynorm', 'filter', '--yignore', 'biasbn', '--batch_size', str(opts.batch_size), '--surf_file', surf,
           *lever.split()]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if out.returncode:
        raise RuntimeError(out.stderr)
    # The summary line: "<file>: N points computed in S s, ..." (the grid loop's own time).
    line = next(l for l in out.stdout.splitlines() if 'points computed in' in l)
    n = int(line.split('points computed')[0].split()[-1])
    seconds = float(line.split('points computed in ')[1].split(' s')[0])
    return n / seconds


def sync(opts):
    if opts.cuda:
        torch.cuda.synchronize()


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory(prefix='bench_surface_') as workdir:
        results = measure(opts, workdir)
    print_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    print('wrote', opts.json)
    return results


def measure(opts, workdir):
    """Every timing of the table, on fake data and a random model written to ``workdir``."""
    write_fake_cifar10(workdir, num_train=opts.num_images, num_test=10)
    from cifar10.zoo import MODELS
    torch.manual_seed(0)
    model_file = os.path.join(workdir, 'model.t7')
    torch.save({'state_dict': MODELS[opts.model]().state_dict(), 'epoch': 0, 'acc': 0.0}, model_file)

    levers = opts.levers or ['']
    suite, floor, naive, run = {lv: [] for lv in levers}, {lv: [] for lv in levers}, [], None
    losses = {}   # lever -> train_loss surface of its last repeat
    ranks2 = {lv: [] for lv in opts.mpi_levers}
    for r in range(opts.repeats):   # interleaved, so slow drifts of the machine hit every path alike
        for lever in levers:
            seconds, run = time_suite(workdir, model_file, opts, r, lever)
            suite[lever].append(seconds)
            losses[lever] = hdf5_layout.read_surface(run.surf_file).values[hdf5_layout.TRAIN_LOSS]
            floor[lever].append(time_floor(run, opts))
            if lever == levers[0] and not opts.skip_naive:
                # levers[0]'s run moves the model; give "" first so the naive loop gets the plain model.
                naive.append(time_naive(workdir, run, opts))
        for lever in opts.mpi_levers:
            ranks2[lever].append(1 / time_mpi(workdir, model_file, opts, 2, lever))
    results = {
        'machine': {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
                    'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'device': torch.cuda.get_device_name() if opts.cuda else 'cpu'},
        'model': opts.model, 'num_images': opts.num_images, 'grid': f'{opts.grid}x{opts.grid}',
        'repeats': opts.repeats,
        'resident_data_mb': run.train_data.data.inputs.element_size() * run.train_data.data.inputs.nelement() / 2**20,
        'levers': {},
    }
    if naive:
        results['naive_s_per_point'] = statistics.median(naive)
    for lever in levers:
        row = {'suite_s_per_point': statistics.median(suite[lever]),
               'floor_s_per_point': statistics.median(floor[lever])}
        row['efficiency'] = row['floor_s_per_point'] / row['suite_s_per_point']
        # What the lever does to the numbers: the largest relative train_loss change over the grid.
        row['max_rel_loss_change'] = float(np.max(np.abs(losses[lever] - losses[levers[0]]) / np.abs(losses[levers[0]])))
        row['suite_images_per_s'] = opts.num_images / row['suite_s_per_point']
        if naive:
            row['speedup_over_naive'] = results['naive_s_per_point'] / row['suite_s_per_point']
        results['levers'][lever.strip() or 'default'] = row
    for lever in opts.mpi_levers:
        row = {'suite_s_per_point': statistics.median(ranks2[lever])}
        row['suite_images_per_s'] = opts.num_images / row['suite_s_per_point']
        if naive:
            row['speedup_over_naive'] = results['naive_s_per_point'] / row['suite_s_per_point']
        results['levers'][f'mpiexec -n 2 --threads 1 {lever.strip()}'.rstrip()] = row
    if opts.mpi:
        one, two = time_mpi(workdir, model_file, opts, 1), time_mpi(workdir, model_file, opts, 2)
        results.update(mpi_1rank_points_per_s=one, mpi_2ranks_points_per_s=two, mpi_scaling=two / one)
    results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def print_table(r):
    print(f"{r['model']}, {r['num_images']} images, {r['grid']} grid, {r['machine']['device']}, "
          f"{r['machine']['threads']} threads, median of {r['repeats']}")
    print(f"{'path':<60}{'s/point':>9}{'images/s':>10}{'vs naive':>10}{'efficiency':>12}{'max rel. loss change':>22}")
    if 'naive_s_per_point' in r:
        n = r['naive_s_per_point']
        print(f"{'naive (DataLoader, bs 128)':<60}{n:>9.3f}{r['num_images'] / n:>10.0f}{1:>9.2f}x{'':>12}")
    for lever, row in r['levers'].items():
        speed = f"{row['speedup_over_naive']:>9.2f}x" if 'speedup_over_naive' in row else f"{'':>10}"
        efficiency = f"{row['efficiency']:>12.3f}{row['max_rel_loss_change']:>22.2e}" if 'efficiency' in row else ''
        print(f"{'suite ' + lever:<60}{row['suite_s_per_point']:>9.3f}{row['suite_images_per_s']:>10.0f}"
              f"{speed}{efficiency}")
    print(f"resident data: {r['resident_data_mb']:.1f} MB, peak RSS {r['peak_rss_mb']:.0f} MB")
    if 'mpi_scaling' in r:
        print(f"MPI: 1 rank x 1 thread {r['mpi_1rank_points_per_s']:.3f} pt/s, 2 ranks x 1 thread "
              f"{r['mpi_2ranks_points_per_s']:.3f} pt/s, scaling {r['mpi_scaling']:.2f}x")


if __name__ == '__main__':
    main()
