"""The grid loop shared by plot_surface.py and plot_hessian_eigen.py: resume, MPI, incremental writes.

Rank 0 opens the surface file (validating it, or creating it), finds the points still missing and
broadcasts them -- the only collective of a run. Each rank evaluates its share (scheduler.py); other
ranks send each result to rank 0 as soon as it exists, and rank 0 records it and rewrites the file
atomically, so a killed run loses only the points in flight and rerunning the same command
computes exactly the missing ones.
"""
import os
import platform
import sys
import time

import h5py
import numpy as np
import torch
from tqdm import tqdm

import bn_folding
import dataloader
import fault_injection
import hdf5_layout
import model_loader
import net_plotter
from cli import check_output_folder
from grid import Grid, parse_axis
from mpi_comm import default_threads, fail_all_ranks, select_device
from scheduler import assign_points


def run_grid(comm, grid, open_writer, evaluate_points, desc='grid points', points_per_call=1):
    """Evaluate ``evaluate_points([(k, names), ...]) -> [{name: float}, ...]`` at every point k of
    ``grid`` that misses a value, handing it up to ``points_per_call`` of this rank's points at a
    time. ``names`` are the values point k misses: the evaluator computes at least those (a file
    that has train_loss and now gets test_loss does not pay for train_loss again).

    ``open_writer()`` (called on rank 0 only) returns a hdf5_layout.SurfaceWriter. Returns a
    summary dict on rank 0 (None elsewhere)."""
    writer = None

    def open_and_list():
        nonlocal writer
        writer = open_writer()
        return [(int(k), writer.missing(k)) for k in writer.pending()]

    missing = dict(comm.root_only(open_and_list))   # the run's one collective
    pending = list(missing)
    mine = assign_points(pending, comm.rank, comm.size)
    calls = [[(int(k), missing[int(k)]) for k in mine[i:i + points_per_call]]
             for i in range(0, len(mine), points_per_call)]
    started = time.perf_counter()
    try:
        if comm.is_root:
            _root_loop(comm, grid, writer, evaluate_points, pending, calls, desc)
        else:
            for points in calls:
                for (k, _), values in zip(points, evaluate_points(points)):
                    comm.send_result(k, values)
                    fault_injection.reached('point')
    except Exception as err:
        fail_all_ranks(comm, err)
    finally:
        if writer is not None:
            writer.close()
    if not comm.is_root:
        return None
    return summarize(writer, len(pending), time.perf_counter() - started)


def _root_loop(comm, grid, writer, evaluate_points, pending, calls, desc):
    done_before = grid.num_points - len(pending)
    with tqdm(total=grid.num_points, initial=done_before, desc=desc, unit='pt', dynamic_ncols=True,
              disable=False, mininterval=0.5) as bar:
        def record(results):
            for k, values in results:
                writer.record(k, values)
            writer.flush()
            bar.update(len(results))
            fault_injection.reached('point', len(results))

        remote_expected, received = len(pending) - sum(len(points) for points in calls), 0
        for points in calls:
            own = [(k, values) for (k, _), values in zip(points, evaluate_points(points))]
            arrived = comm.poll_results()
            received += len(arrived)
            record(own + arrived)
        while received < remote_expected:
            arrived = [comm.recv_result()] + comm.poll_results()
            received += len(arrived)
            record(arrived)


def summarize(writer, computed, seconds):
    """What the run did: points computed now, and how many stored values diverged (inf/NaN)."""
    diverged = {}
    for name, values in writer.values.items():
        bad = int(np.count_nonzero(writer.done[name] & ~np.isfinite(values)))
        if bad:
            diverged[name] = bad
    return {'computed': computed, 'seconds': seconds, 'diverged': diverged,
            'complete': len(writer.pending()) == 0}


# ----------------------------------------------------------------------------- run setup

class Run:
    """Everything a grid evaluation needs, built once per rank by ``prepare_run``."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def move_to(self, k):
        """Put the model at grid point ``k``; return its (x, y) coordinates."""
        x, y = self.grid.point(k)
        net_plotter.move(self.net, self.args.dir_type, self.base, self.xdirection, self.ydirection,
                         x, 0.0 if y is None else y)
        if self.folding is not None:
            self.folding.refresh()
        return x, y


PATH_FIELDS = ('model_file', 'model_file2', 'model_file3', 'train_labels')


def run_identity(args, dir_file, is_2d):
    """The identity fields of a run (hdf5_layout.IDENTITY_FIELDS), paths made absolute, and the
    content id of the directions it uses (once its direction file exists)."""
    identity = {}
    if os.path.exists(dir_file):
        identity[hdf5_layout.DIRECTION_ID] = hdf5_layout.direction_content_id(dir_file, with_y=is_2d)
    for key in hdf5_layout.IDENTITY_FIELDS:
        if hasattr(args, key):
            value = getattr(args, key)
            if key in PATH_FIELDS and value:
                value = os.path.realpath(value)
            identity[key] = value
    return identity


def library_versions(comm):
    versions = {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__,
                'h5py': h5py.__version__, 'mpi_ranks': comm.size}
    mpi = sys.modules.get('mpi4py')
    if mpi is not None:
        versions['mpi4py'] = mpi.__version__
    return versions


def prepare_run(args, comm, value_names, by_products=()):
    """Build model, data and directions on this rank (rank 0 creates the direction file), and a
    factory for the surface file writer (``value_names``, ``by_products``: see SurfaceWriter).
    All arguments were validated before this is called."""
    torch.set_num_threads(args.threads or default_threads(comm))
    device = select_device(args.cuda, comm.local_rank)
    grid = Grid(parse_axis(args.x, '--x'), parse_axis(args.y, '--y') if args.y else None)
    dir_file = net_plotter.name_direction_file(args)
    surf_file = net_plotter.name_surface_file(args, dir_file, grid)

    def check_output_folders():
        # Default names lie beside --model_file, whose folder may be read-only: say so before any
        # work. (A given --surf_file was checked with the other arguments.)
        if not os.path.exists(dir_file):
            check_output_folder(dir_file, 'direction file', 'pass --dir_file to use one from elsewhere')
        if not args.surf_file:
            check_output_folder(surf_file, 'surface file', 'pass --surf_file to write it elsewhere')
    comm.root_only(check_output_folders)

    def load_model(path, flag='--model_file'):
        return model_loader.load(args.dataset, args.model, path, flag)

    net = load_model(args.model_file)

    def load(train):
        return dataloader.load_dataset(args.dataset, args.datapath, train, args.raw_data, args.data_split,
                                       args.split_idx, args.download, device,
                                       labels_file=getattr(args, 'train_labels', '') if train else None)
    # Data before any file is made: a data error must leave the folder as it was.
    train_data = load(True)
    test_data = load(False) if getattr(args, 'eval_test', False) else None
    # `net` is what the grid moves; `eval_net` is what evaluates it (the same model, folded or wrapped).
    # Folded before any file is made: a model torch.fx cannot trace must leave the folder as it was.
    eval_net, folding = net, None
    if getattr(args, 'fold_bn', False):
        folding = bn_folding.BatchNormFolding(net)
        eval_net = folding.module
        if comm.is_root:
            print(f'--fold_bn: {folding.num_folded} BatchNorm layers folded into convolutions'
                  + ('' if folding.num_folded else ' (none follows a convolution directly)'), file=sys.stderr, flush=True)

    base_cpu = net_plotter.get_base(net, args.dir_type)

    def check_then_make_directions():
        # Refuse a surface file made for another run before writing a direction file for it.
        if os.path.exists(surf_file):
            hdf5_layout.check_surface_matches(hdf5_layout.read_surface(surf_file), grid, dir_file,
                                              run_identity(args, dir_file, grid.is_2d))
        net_plotter.setup_direction_file(args, dir_file, net, base_cpu, load_model)
    comm.root_only(check_then_make_directions)

    # The folded convolutions live in folding.module only; every other layer is net's own.
    for model in [net] if folding is None else [net, folding.module]:
        model.to(device)
        if getattr(args, 'channels_last', False):
            model.to(memory_format=torch.channels_last)
    if getattr(args, 'channels_last', False):
        train_data, test_data = (d and d.channels_last() for d in (train_data, test_data))
    if args.cuda and args.ngpu > 1:
        eval_net = torch.nn.DataParallel(eval_net, device_ids=list(range(min(args.ngpu, torch.cuda.device_count()))))
    if getattr(args, 'compile', False):
        # Parameters stay graph inputs (inductor's freezing is off by default), so moving the
        # weights in place between points needs no recompilation.
        eval_net = torch.compile(eval_net, dynamic=False)
    base = [t.to(device) for t in base_cpu]
    xdirection, ydirection = net_plotter.load_directions(dir_file, base_cpu, grid.is_2d, device)

    def open_writer():
        attrs = {hdf5_layout.ARGS_ATTR: vars(args), hdf5_layout.VERSIONS_ATTR: library_versions(comm)}
        return hdf5_layout.SurfaceWriter(surf_file, grid, dir_file, value_names,
                                         run_identity(args, dir_file, grid.is_2d), attrs, by_products)

    return Run(args=args, comm=comm, device=device, grid=grid, net=net, eval_net=eval_net, folding=folding,
               base=base, dir_file=dir_file, surf_file=surf_file, xdirection=xdirection, ydirection=ydirection,
               train_data=train_data, test_data=test_data, open_writer=open_writer)
