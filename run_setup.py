"""Building a run: everything a grid evaluation needs on one rank, made by named steps in order.

Used by plot_surface.py and plot_hessian_eigen.py (and landscape.py); the grid loop that consumes a
Run is surface_engine.run_grid.
"""
import os
import platform
import sys

import h5py
import numpy as np
import torch

import bn_folding
import dataloader
import hdf5_layout
import model_loader
import net_plotter
from cli import check_output_folder
from grid import Grid, parse_axis
from mpi_comm import default_threads, select_device

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
