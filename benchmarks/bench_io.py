"""Surface file I/O per grid point: a small grid against a large one, and the finished file's size.

Two parts, each on a SMALL x SMALL and a LARGE x LARGE grid (--grids), side by side in one run:
  (a) store    -- surface_store.SurfaceWriter alone, fed synthetic values for 4 arrays (the arrays of
                  an --eval_test surface): opening (creating the file), recording every point with
                  the default flush policy, and closing, timed together; again with a flush after
                  every point (LANDSCAPE_FLUSH_SECONDS=0), the cost of one flush;
  (b) run      -- plot_surface.py itself, as a user runs it, on the digits MLP (random weights,
                  1/--data_split of the data per point, 1 thread): its grid-loop time per point.
Constant I/O per point shows as a large-grid / small-grid ratio near 1 in every row. Each row also
gives the finished file's bytes against the bytes its arrays hold. Prints a table and writes it as
JSON.

    python benchmarks/bench_io.py --grids 41 201
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import h5py

from losslandscape.cli.parsing import DefaultsHelpFormatter
from losslandscape.engine.grid import Grid, parse_axis
from losslandscape.io import hdf5_layout, surface_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STORE_NAMES = (hdf5_layout.TRAIN_LOSS, hdf5_layout.TRAIN_ACC, hdf5_layout.TEST_LOSS, hdf5_layout.TEST_ACC)


def get_args_parser():
    parser = argparse.ArgumentParser('bench_io.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument('--grids', nargs=2, type=int, default=[41, 201], metavar=('SMALL', 'LARGE'),
                        help='points per axis of the small and the large square grid')
    parser.add_argument('--data_split', default=10, type=int,
                        help='the whole-run rows evaluate 1/DATA_SPLIT of the digits training data per point')
    parser.add_argument('--skip_run', action='store_true', help='only the store rows (no plot_surface.py runs)')
    parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'out', 'bench_io.json'),
                        help='where to write the results')
    return parser


def array_bytes(path):
    """The bytes the datasets of an HDF5 file hold (their data, not HDF5's bookkeeping)."""
    sizes = []
    with h5py.File(path, 'r') as f:
        f.visititems(lambda name, node: sizes.append(node.nbytes) if isinstance(node, h5py.Dataset) else None)
    return sum(sizes)


def file_row(path, points, seconds):
    size, data = os.path.getsize(path), array_bytes(path)
    return {'points': points, 's_per_point': seconds / points, 'file_bytes': size, 'array_bytes': data,
            'file_over_arrays': size / data}


def time_store(workdir, n, flush_seconds):
    """One SurfaceWriter run over an n x n grid with synthetic values: open, record all, close."""
    path = os.path.join(workdir, f'store_{n}_{flush_seconds}.h5')
    grid = Grid(parse_axis(f'-1:1:{n}'), parse_axis(f'-1:1:{n}'))
    previous = os.environ.get(surface_store.FLUSH_SECONDS_VARIABLE)
    if flush_seconds is None:
        os.environ.pop(surface_store.FLUSH_SECONDS_VARIABLE, None)
    else:
        os.environ[surface_store.FLUSH_SECONDS_VARIABLE] = str(flush_seconds)
    try:
        start = time.perf_counter()
        writer = surface_store.SurfaceWriter(path, grid, 'directions.h5', STORE_NAMES, {'model': 'synthetic'},
                                             {hdf5_layout.ARGS_ATTR: {'grid': n}, hdf5_layout.VERSIONS_ATTR: {}})
        for k in writer.pending():
            k = int(k)
            writer.record(k, {name: k + i / 10 for i, name in enumerate(STORE_NAMES)})
            writer.flush_if_due()
        writer.close()
        seconds = time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop(surface_store.FLUSH_SECONDS_VARIABLE, None)
        else:
            os.environ[surface_store.FLUSH_SECONDS_VARIABLE] = previous
    return file_row(path, grid.num_points, seconds)


def time_run(workdir, model_file, n, data_split):
    """plot_surface.py on an n x n grid around the digits MLP: its grid-loop seconds per point."""
    surf = os.path.join(workdir, f'run_{n}.h5')
    cmd = [sys.executable, os.path.join(ROOT, 'plot_surface.py'), '--dataset', 'digits', '--model', 'mlp',
           '--model_file', model_file, f'--x=-1:1:{n}', f'--y=-1:1:{n}', '--xnorm', 'filter', '--ynorm', 'filter',
           '--data_split', str(data_split), '--threads', '1', '--surf_file', surf]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    env.pop(surface_store.FLUSH_SECONDS_VARIABLE, None)
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'plot_surface.py failed ({done.returncode}): {done.stderr[-2000:]}')
    # The run's own report: "<file>: N points computed in S s, surface complete".
    counted, seconds = done.stdout.split(' points computed in ')
    points, seconds = int(counted.rsplit(' ', 1)[-1]), float(seconds.split(' s')[0])
    return file_row(surf, points, seconds)


def write_mlp_checkpoint(workdir):
    import torch

    from losslandscape.models.digits import MODELS
    torch.manual_seed(0)
    path = os.path.join(workdir, 'mlp.t7')
    torch.save({'state_dict': MODELS['mlp']().state_dict(), 'epoch': 0, 'acc': 0.0}, path)
    return path


def measure(opts, workdir):
    small, large = opts.grids
    rows = {}
    for label, flush_seconds in (('store, default flush policy', None), ('store, flush after every point', 0)):
        rows[label] = {str(n): time_store(workdir, n, flush_seconds) for n in (small, large)}
    if not opts.skip_run:
        model_file = write_mlp_checkpoint(workdir)
        rows[f'plot_surface.py, digits MLP, --data_split {opts.data_split}'] = {
            str(n): time_run(workdir, model_file, n, opts.data_split) for n in (small, large)}
    for row in rows.values():
        # A tiny grid's run can report 0.00 s (its report has 2 decimals): no ratio then.
        smallest = row[str(small)]['s_per_point']
        row['large_over_small_per_point'] = row[str(large)]['s_per_point'] / smallest if smallest > 0 else float('nan')
    return {'machine': {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
                        'h5py': h5py.__version__, 'hdf5': h5py.version.hdf5_version},
            'grids': [small, large], 'flush_interval_s': surface_store.FLUSH_INTERVAL_SECONDS, 'rows': rows}


def print_table(results):
    small, large = results['grids']
    print(f'surface file I/O per point, {small}x{small} vs {large}x{large} grid '
          f'(default flush interval {results["flush_interval_s"]} s)')
    print(f'{"":46} {"grid":>9} {"s/point":>10} {"file bytes":>11} {"array bytes":>11} {"file/arrays":>11}')
    for label, row in results['rows'].items():
        for n in (small, large):
            cell = row[str(n)]
            print(f'{label if n == small else "":46} {f"{n}x{n}":>9} {cell["s_per_point"]:10.3g} '
                  f'{cell["file_bytes"]:11d} {cell["array_bytes"]:11d} {cell["file_over_arrays"]:11.3f}')
        print(f'{"":46} {"ratio":>9} {row["large_over_small_per_point"]:9.2f}x')


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='bench_io_') as workdir:
        results = measure(opts, workdir)
    print_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
    with open(opts.json, 'w') as fh:
        json.dump(results, fh, indent=2)
    print('wrote', opts.json)
    return results


if __name__ == '__main__':
    main()
