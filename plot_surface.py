"""Loss and accuracy on a 1D or 2D grid around a trained model, stored in an HDF5 surface file.

Along filter-normalized random directions (Li et al., NeurIPS 2018), or between two or three
trained models; for any model, data and loss (--loss_name, --dataset package.module:factory).
Serial, or in parallel under MPI:

    python plot_surface.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 \\
        --x=-1:1:21 --y=-1:1:21 --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --plot
    mpiexec -n 4 python plot_surface.py --mpi --cuda ...     (one GPU per rank, spread per node)

Rerunning the same command resumes: only missing points are computed. The file layout is
documented in hdf5_layout.py; the run is built by run_setup.py, the grid loop is surface_engine.py.
"""
import sys

import grid_args
import hdf5_layout
import landscape
from cli import ArgumentParser, run_main
from mpi_comm import get_comm
from run_setup import RunSettings


def get_args_parser(add_help=True):
    parser = ArgumentParser('plot_surface.py', add_help=add_help, description=__doc__.split('\n\n')[0])
    grid_args.add_grid_script_arguments(parser)
    grid_args.add_plot_arguments(parser, loss_plots=True)
    return parser


def plot_results(args, run):
    """Draw what plot_1D / plot_2D draw for this surface (rank 0 only)."""
    if not run.grid.is_2d:
        import plot_1D
        return plot_1D.plot_1d_loss_err(run.surf_file, xmin=run.grid.x.min, xmax=run.grid.x.max,
                                        loss_max=args.loss_max, log=args.log, show=args.show)
    import plot_2D
    paths = plot_2D.plot_2d_contour(run.surf_file, surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                    vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    if args.proj_file:
        paths += plot_2D.plot_contour_trajectory(run.surf_file, run.dir_file, args.proj_file,
                                                 surf_name=hdf5_layout.TRAIN_LOSS, vmin=args.vmin,
                                                 vmax=args.vmax, vlevel=args.vlevel, show=args.show)
    return paths


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    grid_args.validate(parser, args)
    comm = get_comm(args.mpi)
    run, _ = landscape.compute_surface(RunSettings.from_args(args), comm)
    if comm.is_root and args.plot:
        plot_results(args, run)   # the plot modules say what they wrote
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
