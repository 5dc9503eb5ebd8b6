"""Loss and accuracy on a 1D or 2D grid around a trained model, stored in an HDF5 surface file.

Along filter-normalized random directions (Li et al., NeurIPS 2018), or between two or three
trained models; for any model, data and loss (--loss_name, --dataset package.module:factory).
Serial, or in parallel under MPI:

    python plot_surface.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 \\
        --x=-1:1:21 --y=-1:1:21 --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --plot
    mpiexec -n 4 python plot_surface.py --mpi --cuda ...     (one GPU per rank, spread per node)

Along a trained curve between two models (train_curve.py), x being the curve's t:

    python plot_surface.py --dataset digits --model cnn_bn --curve_file demo_out/curve.h5 --x=0:1:21

and in the plane through the curve's ends and bend (--model_file3 CURVE_FILE), whose points of the
curve are written beside the surface as a projection file that --plot (or plot_2D.py --proj_file)
draws on the contours.

Rerunning the same command resumes: only missing points are computed. The file layout is
documented in hdf5_layout.py; the run is built by run_setup.py, the grid loop is surface_engine.py.
"""
import os

import numpy as np

from losslandscape import api
from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser, run_as_script
from losslandscape.curves import connecting_curves
from losslandscape.engine.run_setup import RunSettings
from losslandscape.io import hdf5_layout
from losslandscape.parallel.mpi_comm import get_comm


def get_args_parser(add_help=True):
    parser = ArgumentParser('plot_surface.py', add_help=add_help, description=__doc__.split('\n\n')[0])
    grid_args.add_grid_script_arguments(parser)
    grid_args.add_plot_arguments(parser, loss_plots=True)
    return parser


CURVE_PROJECTION_POINTS = 41


def write_curve_projection(curve_file, surf_file):
    """The curve's points in the plane through its ends and bend (a curve file as --model_file3),
    as a projection file beside the surface: SURF_FILE_curve_proj.h5."""
    record = hdf5_layout.read_curve_file(curve_file, '--model_file3')
    x, y = connecting_curves.plane_coordinates(record.curve_type, np.linspace(0, 1, CURVE_PROJECTION_POINTS))
    path = surf_file + '_curve_proj.h5'
    hdf5_layout.write_projection_file(path, x, y, attrs={hdf5_layout.CURVE_FILE_ATTR: os.path.realpath(curve_file)})
    print(f'wrote {path} (the curve in this plane: plot_2D.py --surf_file {surf_file} --proj_file {path})')
    return path


def plot_results(args, run, proj_file=''):
    """Draw what plot_1D / plot_2D draw for this surface (rank 0 only); ``proj_file``: a path to
    draw on the contours besides --proj_file (the curve of a curve plane)."""
    if not run.grid.is_2d:
        from losslandscape.figures import curve_figures
        return curve_figures.plot_1d_loss_err(run.surf_file, xmin=run.grid.x.min, xmax=run.grid.x.max,
                                        loss_max=args.loss_max, log=args.log, show=args.show)
    from losslandscape.figures import surface_figures
    paths = surface_figures.plot_2d_contour(run.surf_file, surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                    vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    for path in (args.proj_file, proj_file):
        if path:
            paths += surface_figures.plot_contour_trajectory(run.surf_file, run.dir_file, path,
                                                     surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                                     vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    return paths


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    grid_args.validate(parser, args)
    comm = get_comm(args.mpi)
    run, _ = api.compute_surface(RunSettings.from_args(args), comm)
    curve_plane = args.model_file3 and hdf5_layout.is_curve_file(args.model_file3)
    proj_file = write_curve_projection(args.model_file3, run.surf_file) if comm.is_root and curve_plane else ''
    if comm.is_root and args.plot:
        plot_results(args, run, proj_file)   # the plot modules say what they wrote
    return 0


if __name__ == '__main__':
    run_as_script(main)
