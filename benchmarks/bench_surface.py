"""Seconds per grid point: this suite's plot_surface path against a naive per-point loop.

Measured side by side in one run, on the same model, data and directions:
  (a) suite    -- run_setup.prepare_run + surface_engine.run_grid with plot_surface's point evaluator (resident
                  uint8 data, normalised per batch, incremental HDF5 writes included), with each lever's flags
                  ("": plot_surface.py's defaults, whose compute configuration is chosen on this machine);
  (b) naive    -- the original code's loop: torchvision CIFAR10 with ToTensor+Normalize through a DataLoader
                  (batch 128, 2 workers), model.eval(), torch.no_grad(), weights set per point, on a model
                  loaded afresh (NCHW, unfolded);
  (c) floor    -- one plain forward pass of the suite's model (as its flags configure it) over the
                  already-normalised data.
Each lever's row also gives its start-up (prepare_run: data, model, directions, and the timing of the
compute configuration when the defaults choose it, each repeat on an empty timing cache as on a
machine's first run) and that of a second run, which finds the timing in the cache; the whole run
(start-up plus points) against the naive loop's (its set-up of data set and loader plus points), for
both; the configuration it ran, and the largest relative change of train_loss it causes over the grid
against the naive loop's (and against the first lever's).
Prints a table (median of --repeats) and writes it as JSON. Fake CIFAR-shaped data is used: the
timing does not depend on the pixel values.

    python benchmarks/bench_surface.py --model resnet20 --num_images 2000 --grid 5 \
        --levers "" "--compute_config plain" "--channels_last --batch_size 64 --fold_bn" " --amp" \
        --mpi_levers "" "--channels_last --batch_size 64 --fold_bn" --mpi

A lever "--target_stderr 0.01" evaluates every point on the images it chooses at the centre (the
configuration column says how many): its whole run, the search included, against the full data's.
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
from unittest import mock

import numpy as np
import torch

from losslandscape import plot_surface
from losslandscape._testing.fake_cifar10 import write_fake_cifar10
from losslandscape.cli import grid_args
from losslandscape.cli.parsing import DefaultsHelpFormatter
from losslandscape.compute import timing_cache
from losslandscape.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from losslandscape.directions import moving, sources, subsets
from losslandscape.engine import evaluators
from losslandscape.engine.run_setup import RunSettings, prepare_run
from losslandscape.engine.surface_engine import run_grid
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.parallel.mpi_comm import SerialComm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser('bench_surface.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--model', default='resnet20', help='CIFAR-10 zoo model')
    parser.add_argument('--num_images', default=2000, type=int, help='training images evaluated per point')
    parser.add_argument('--grid', default=5, type=int, help='grid points per axis (a GRID x GRID surface)')
    parser.add_argument('--batch_size', default=None, type=int, help='--batch_size of every suite run (default: '
                        'none given, so the suite chooses; the naive loop always takes 128, as the original)')
    parser.add_argument('--repeats', default=3, type=int, help='repeats of each measurement (median reported)')
    parser.add_argument('--threads', default=None, type=int, help='torch threads (default: torch\'s choice)')
    parser.add_argument('--cuda', action='store_true', help='measure on the GPU')
    parser.add_argument('--mpi', action='store_true', help='also measure 1 rank x 1 thread against 2 ranks x 1 thread')
    parser.add_argument('--levers', nargs='*', default=[], help='plot_surface.py flags for the suite path, one '
                        'quoted string per variant to compare side by side, e.g. "" (the defaults: the compute '
                        'configuration chosen on this machine) "--compute_config plain" "--channels_last --batch_size '
                        '64 --fold_bn" " --amp" (a lone flag needs the leading space, or argparse takes it for an option '
                        'of this script); default: "" alone')
    parser.add_argument('--mpi_levers', nargs='*', default=[], help='plot_surface.py flags to time under '
                        '"mpiexec -n 2 ... --mpi --threads 1" too, one quoted string per variant, as rows of the '
                        'same table (the whole machine split into ranks instead of threads)')
    parser.add_argument('--skip_naive', action='store_true', help='skip the (slow) naive baseline')
    parser.add_argument('--naive_worker', nargs=2, metavar=('MODEL_FILE', 'DIR_FILE'), default=None,
                        help='internal: time only the naive loop, in this process, along DIR_FILE\'s directions, and '
                        'write it to --json (the benchmark runs itself so for the naive row: a fresh process, as '
                        'the original code runs)')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_surface.json'),
                        help='where to write the results')
    return parser


def surface_args(workdir, model_file, opts, extra=()):
    argv = ['--dataset', 'cifar10', '--datapath', workdir, '--model', opts.model, '--model_file', model_file,
            f'--x=-1:1:{opts.grid}', f'--y=-1:1:{opts.grid}', '--xnorm', 'filter', '--xignore', 'biasbn',
            '--ynorm', 'filter', '--yignore', 'biasbn', *batch_size_flag(opts), *extra]
    if opts.cuda:
        argv.append('--cuda')
    if opts.threads:
        argv += ['--threads', str(opts.threads)]   # else prepare_run picks the node's default
    parser = plot_surface.get_args_parser()
    args = parser.parse_args(argv)
    grid_args.choose_model_and_loss(parser, args)   # the defaults plot_surface.py resolves (--loss_name)
    return args


def batch_size_flag(opts):
    return ['--batch_size', str(opts.batch_size)] if opts.batch_size else []


def time_suite(workdir, model_file, opts, repeat, lever=''):
    """(seconds per point of the suite's own grid loop, seconds of its start-up, seconds of the
    start-up of a second run on this machine, the run), on a fresh surface file and a fresh timing
    cache each repeat (so the defaults choose their configuration each time, as on a machine's first
    run); the second run, on another fresh surface file, finds the first one's timing in the cache."""
    tag = f'{repeat}_{abs(hash(lever))}'
    # An empty timing cache in workdir: the developer's own is neither read nor written.
    with mock.patch.dict(os.environ, {timing_cache.ENV_VARIABLE: os.path.join(workdir, f'cache_{tag}')}):
        startup, run, args = start_suite(workdir, model_file, opts, lever, f'suite_{tag}.h5')
        start = time.perf_counter()
        by_products = run.by_product_names()   # the standard errors and rises, as plot_surface.py stores them
        run_grid(SerialComm(), run.grid, run.open_writer(run.value_names() + by_products, by_products),
                 evaluators.make_loss_evaluator(run), points_per_call=args.points_per_call)
        sync(opts)
        seconds = (time.perf_counter() - start) / run.grid.num_points
        second_startup, _, _ = start_suite(workdir, model_file, opts, lever, f'second_{tag}.h5')
    return seconds, startup, second_startup, run


def start_suite(workdir, model_file, opts, lever, name):
    """(seconds of prepare_run, the run, its arguments) for ``lever`` on a new surface file ``name``."""
    args = surface_args(workdir, model_file, opts, ['--surf_file', os.path.join(workdir, name), *lever.split()])
    start = time.perf_counter()
    run = prepare_run(RunSettings.from_args(args), SerialComm())
    sync(opts)
    return time.perf_counter() - start, run, args


def time_naive(workdir, model_file, run, opts):
    """(seconds per point, seconds of set-up, train_loss per point) of the naive loop (naive_loop), timed in a fresh
    process as the original code runs: untouched by what the suite's runs did to this one (its
    allocator setting, warmed-up kernels)."""
    out = os.path.join(workdir, f'naive_{time.monotonic_ns()}.json')
    cmd = [sys.executable, os.path.abspath(__file__), '--naive_worker', model_file, run.dir_file, '--model', opts.model,
           '--grid', str(opts.grid), '--json', out, *(['--threads', str(opts.threads)] if opts.threads else []),
           *(['--cuda'] if opts.cuda else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    with open(out) as fh:
        result = json.load(fh)
    return result['seconds_per_point'], result['setup_s'], np.asarray(result['train_loss'])


def naive_worker(opts):
    """--naive_worker MODEL_FILE DIR_FILE: time naive_loop in this process, write it to --json."""
    from losslandscape.engine.grid import Grid, parse_axis
    model_file, dir_file = opts.naive_worker
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device('cuda' if opts.cuda else 'cpu')
    start = time.perf_counter()
    net = loading.load('cifar10', opts.model, model_file).to(device)
    base = [w.to(device) for w in subsets.get_base(net, 'weights')]
    grid = Grid(parse_axis(f'-1:1:{opts.grid}', '--x'), parse_axis(f'-1:1:{opts.grid}', '--y'))
    held = sources.open_directions(dir_file, 'resident', net, base, True, device)
    xdirection, ydirection = held.full('x', base), held.full('y', base)
    loaded = time.perf_counter() - start
    seconds, setup, losses = naive_loop(os.path.dirname(model_file), net, base, xdirection, ydirection, grid, device,
                                        opts)
    with open(opts.json, 'w') as fh:
        json.dump({'seconds_per_point': seconds, 'setup_s': loaded + setup, 'train_loss': losses.tolist()}, fh)


def naive_loop(workdir, net, base, xdirection, ydirection, grid, device, opts):
    """(seconds per point, seconds of set-up (the data set and its loader), train_loss per point) of
    the per-point loop the original code and most loss-landscape scripts use: a torchvision data
    set through a DataLoader at every point."""
    start = time.perf_counter()
    import torchvision
    import torchvision.transforms as T

    # torchvision refuses batches whose checksums differ from the official ones: let it read the fakes.
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True
    transform = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset = torchvision.datasets.CIFAR10(workdir, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=False, num_workers=2)
    criterion = torch.nn.CrossEntropyLoss()
    points, losses = grid.num_points, np.zeros(grid.shape)
    sync(opts)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(points):
        x, y = grid.point(k)
        moving.set_weights(net, base, xdirection, ydirection, x, y)
        net.eval()
        total, correct, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = net(inputs)
                loss_sum += criterion(outputs, targets).item() * len(targets)
                correct += (outputs.argmax(1) == targets).sum().item()
                total += len(targets)
        losses[grid.index(k)] = loss_sum / total
    sync(opts)
    return (time.perf_counter() - start) / points, setup, losses


def time_floor(run, opts):
    """One forward pass over the already-normalised data: the cost a grid point cannot beat."""
    data, batch_size = run.train_data.data, run.settings.batch_size
    prepared = [data.normalize(data.inputs[i:i + batch_size]) for i in range(0, len(data), batch_size)]
    run.eval_net.eval()
    sync(opts)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.settings.amp):
        for batch in prepared:
            run.eval_net(batch)   # the model as the suite calls it (folded with --fold_bn, in bf16 with --amp)
    sync(opts)
    return time.perf_counter() - start


def time_mpi(workdir, model_file, opts, ranks, lever=''):
    """(seconds per point of the grid loop with ``ranks`` ranks of one thread each, the compute
    configuration rank 0 chose and printed)."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    surf = os.path.join(workdir, f'mpi_{ranks}_{time.monotonic_ns()}.h5')
    cmd = [mpiexec, '-n', str(ranks), sys.executable, os.path.join(ROOT, 'plot_surface.py'), '--mpi', '--threads', '1',
           '--dataset', 'cifar10', '--datapath', workdir, '--model', opts.model, '--model_file', model_file,
           f'--x=-1:1:{opts.grid}', f'--y=-1:1:{opts.grid}', '--xnorm', 'filter', '--xignore', 'biasbn',
           '--ynorm', 'filter', '--yignore', 'biasbn', *batch_size_flag(opts), '--surf_file', surf,
           *lever.split()]
    cache = os.path.join(workdir, f'cache_mpi_{time.monotonic_ns()}')   # each MPI run times its configuration
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1', timing_cache.ENV_VARIABLE: cache})
    if out.returncode:
        raise RuntimeError(out.stderr)
    # The summary line: "<file>: N points computed in S s, ..." (the grid loop's own time).
    line = next(l for l in out.stdout.splitlines() if 'points computed in' in l)
    n = int(line.split('points computed')[0].split()[-1])
    seconds = float(line.split('points computed in ')[1].split(' s')[0])
    chosen = next(l for l in out.stdout.splitlines() if l.startswith('compute: '))
    return seconds / n, chosen[len('compute: '):].split(' (')[0]


def sync(opts):
    if opts.cuda:
        torch.cuda.synchronize()


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.naive_worker:
        return naive_worker(opts)
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
    from losslandscape.models.cifar10.zoo import MODELS
    torch.manual_seed(0)
    model_file = os.path.join(workdir, 'model.t7')
    torch.save({'state_dict': MODELS[opts.model]().state_dict(), 'epoch': 0, 'acc': 0.0}, model_file)

    levers = opts.levers or ['']
    suite, startup, second_startup, floor = ({lv: [] for lv in levers} for _ in range(4))
    configs = {lv: [] for lv in levers}   # the compute configuration each repeat ran
    naive, naive_setup, naive_losses, run = [], [], None, None
    losses = {}   # lever -> train_loss surface of its last repeat
    ranks2 = {lv: [] for lv in opts.mpi_levers}
    mpi_configs = {lv: [] for lv in opts.mpi_levers}
    for r in range(opts.repeats):   # interleaved, so slow drifts of the machine hit every path alike
        # Each repeat starts at another lever: a place in the order (the first after the MPI runs,
        # the one after the naive loop's processes) then falls to each in turn, not always to one.
        order = levers[r % len(levers):] + levers[:r % len(levers)]
        for lever in order:
            seconds, started, started_again, run = time_suite(workdir, model_file, opts, r, lever)
            suite[lever].append(seconds)
            startup[lever].append(started)
            second_startup[lever].append(started_again)
            configs[lever].append(run.compute.config.describe() + (', bf16 autocast' if run.settings.amp else '')
                                  + (f', {run.settings.samples} of {opts.num_images} images (--samples)'
                                     if run.settings.samples is not None else ''))
            losses[lever] = hdf5_layout.read_surface(run.surf_file).values[hdf5_layout.TRAIN_LOSS]
            floor[lever].append(time_floor(run, opts))
            if lever == order[0] and not opts.skip_naive:
                seconds, setup, naive_losses = time_naive(workdir, model_file, run, opts)
                naive.append(seconds)
                naive_setup.append(setup)
        for lever in opts.mpi_levers:
            seconds_per_point, config = time_mpi(workdir, model_file, opts, 2, lever)
            ranks2[lever].append(seconds_per_point)
            mpi_configs[lever].append(config)
    results = {
        'machine': {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
                    'cpu_model': cpu_model(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'device': torch.cuda.get_device_name() if opts.cuda else 'cpu'},
        'model': opts.model, 'num_images': opts.num_images, 'grid': f'{opts.grid}x{opts.grid}',
        'repeats': opts.repeats,
        'resident_data_mb': run.train_data.data.inputs.element_size() * run.train_data.data.inputs.nelement() / 2**20,
        'levers': {},
    }
    points = opts.grid ** 2
    if naive:
        results['naive_s_per_point'] = statistics.median(naive)
        results['naive_setup_s'] = statistics.median(naive_setup)
        results['naive_whole_run_s'] = results['naive_setup_s'] + points * results['naive_s_per_point']
    for lever in levers:
        row = {'suite_s_per_point': statistics.median(suite[lever]),
               'startup_s': statistics.median(startup[lever]),
               'second_run_startup_s': statistics.median(second_startup[lever]),
               'floor_s_per_point': statistics.median(floor[lever]),
               'configurations': configs[lever]}
        row['efficiency'] = row['floor_s_per_point'] / row['suite_s_per_point']
        # What the lever does to the numbers: the largest relative train_loss change over the grid.
        row['max_rel_loss_change'] = max_relative_change(losses[lever], losses[levers[0]])
        row['suite_images_per_s'] = opts.num_images / row['suite_s_per_point']
        # Whole runs: start-up plus the grid loop, on a machine's first run and on a later one.
        row['whole_run_s'] = row['startup_s'] + points * row['suite_s_per_point']
        row['second_whole_run_s'] = row['second_run_startup_s'] + points * row['suite_s_per_point']
        if naive:
            row['speedup_over_naive'] = results['naive_s_per_point'] / row['suite_s_per_point']
            row['whole_run_speedup'] = results['naive_whole_run_s'] / row['whole_run_s']
            row['second_whole_run_speedup'] = results['naive_whole_run_s'] / row['second_whole_run_s']
            row['max_rel_change_vs_naive'] = max_relative_change(losses[lever], naive_losses)
            row['max_abs_change_vs_naive'] = float(np.max(np.abs(losses[lever] - naive_losses)))
        results['levers'][lever.strip() or 'default'] = row
    for lever in opts.mpi_levers:
        row = {'suite_s_per_point': statistics.median(ranks2[lever]), 'configurations': mpi_configs[lever]}
        row['suite_images_per_s'] = opts.num_images / row['suite_s_per_point']
        if naive:
            row['speedup_over_naive'] = results['naive_s_per_point'] / row['suite_s_per_point']
        results['levers'][f'mpiexec -n 2 --threads 1 {lever.strip()}'.rstrip()] = row
    if opts.mpi:
        one, two = (1 / time_mpi(workdir, model_file, opts, n, '--compute_config plain')[0] for n in (1, 2))
        results.update(mpi_1rank_points_per_s=one, mpi_2ranks_points_per_s=two, mpi_scaling=two / one)
    results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def max_relative_change(values, reference):
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


def cpu_model():
    """The CPU's model name as lscpu gives it (Linux), else platform's processor string."""
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
        return next(line.split(':', 1)[1].strip() for line in out.splitlines() if line.startswith('Model name'))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor()


def print_table(r):
    print(f"{r['model']}, {r['num_images']} images, {r['grid']} grid, {r['machine']['device']} "
          f"({r['machine']['cpu_model']}), {r['machine']['threads']} threads, median of {r['repeats']}")
    print(f"{'path':<58}{'s/point':>9}{'start s':>13}{'vs naive':>10}{'whole run':>13}{'efficiency':>11}"
          f"{'rel. change':>13}  configuration")
    if 'naive_s_per_point' in r:
        n = r['naive_s_per_point']
        print(f"{'naive (DataLoader, bs 128)':<58}{n:>9.3f}{r['naive_setup_s']:>13.2f}{1:>9.2f}x{1:>12.2f}x"
              f"{'':>11}{'':>13}  batch 128 (NCHW, unfolded)")
    for lever, row in r['levers'].items():
        speed = f"{row['speedup_over_naive']:>9.2f}x" if 'speedup_over_naive' in row else f"{'':>10}"
        start = f"{row['startup_s']:>6.2f} /{row['second_run_startup_s']:>5.2f}" if 'startup_s' in row else f"{'':>13}"
        whole = (f"{row['whole_run_speedup']:>6.2f} /{row['second_whole_run_speedup']:>5.2f}"
                 if 'whole_run_speedup' in row else f"{'':>13}")
        efficiency = f"{row['efficiency']:>11.3f}" if 'efficiency' in row else f"{'':>11}"
        change = row.get('max_rel_change_vs_naive', row.get('max_rel_loss_change'))
        change = f"{change:>13.2e}" if change is not None else f"{'':>13}"
        chosen = ' | '.join(dict.fromkeys(row['configurations']))   # each distinct one, in order
        print(f"{'suite ' + lever:<58}{row['suite_s_per_point']:>9.3f}{start}{speed}{whole}{efficiency}{change}"
              f"  {chosen}")
    reference = 'the naive loop' if 'naive_s_per_point' in r else 'the first suite row'
    print("start s: the set-up before the first point (the suite's: on this machine's first run of the model, "
          "which times its configuration / on a later run, which finds it in the timing cache); whole run: the "
          "naive loop's set-up and points against the suite's, first / later run")
    print(f"rel. change: the largest relative change of train_loss over the grid against {reference}")
    print(f"resident data: {r['resident_data_mb']:.1f} MB, peak RSS {r['peak_rss_mb']:.0f} MB")
    if 'mpi_scaling' in r:
        print(f"MPI (--compute_config plain): 1 rank x 1 thread {r['mpi_1rank_points_per_s']:.3f} pt/s, 2 ranks x "
              f"1 thread {r['mpi_2ranks_points_per_s']:.3f} pt/s, scaling {r['mpi_scaling']:.2f}x")


if __name__ == '__main__':
    main()
