"""Largest and smallest Hessian eigenvalues of the training loss on a 1D or 2D grid, in the surface file.

The same grid, directions, model, data, MPI and resume behaviour as plot_surface.py (same flags,
same default surface file), so max_eig, min_eig and hvp_count (and trace with --trace) land beside
train_loss in one file. --plot draws |min_eig / max_eig|, the paper's measure of non-convexity
(Li et al. 2018, section 7). The Hessian is that of the mean loss over the (--data_split part of
the) training data with respect to the weights with dim > 1 (see hessian.py):

    python plot_hessian_eigen.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 \\
        --x=-1:1:11 --y=-1:1:11 --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn --plot
    mpiexec -n 4 python plot_hessian_eigen.py --mpi ...
"""
import numpy as np

from losslandscape import api
from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser, run_as_script
from losslandscape.engine.run_setup import RunSettings
from losslandscape.io import hdf5_layout
from losslandscape.parallel.mpi_comm import get_comm


def get_args_parser():
    parser = ArgumentParser('plot_hessian_eigen.py', description=__doc__.split('\n\n')[0])
    grid_args.add_grid_script_arguments(parser)
    grid_args.add_plot_arguments(parser, loss_plots=False)
    grid_args.add_hessian_arguments(parser)
    return parser


def report_eigenvalues(surf_file):
    """One line on the stored eigenvalues: their ranges, the worst |min/max| and the products used."""
    surface = hdf5_layout.read_surface(surf_file)
    done = surface.done[hdf5_layout.MAX_EIG] & surface.done[hdf5_layout.MIN_EIG]
    max_eig, min_eig = surface.values[hdf5_layout.MAX_EIG][done], surface.values[hdf5_layout.MIN_EIG][done]
    finite = np.isfinite(max_eig) & np.isfinite(min_eig)
    if not finite.any():
        return
    nonzero = finite & (max_eig != 0)   # a zero Hessian (every ReLU dead) has no ratio
    worst = f', |min/max| <= {np.abs(min_eig[nonzero] / max_eig[nonzero]).max():.3g}' if nonzero.any() else ''
    products = surface.values[hdf5_layout.HVP_COUNT][surface.done[hdf5_layout.HVP_COUNT]]
    # Points from a file of the original code have no count (and files before eig_solve no way).
    ways = surface.values[hdf5_layout.EIG_SOLVE][surface.done[hdf5_layout.EIG_SOLVE]] \
        if hdf5_layout.EIG_SOLVE in surface.values else np.array([])
    solved = ', '.join(f'{np.count_nonzero(ways == code)} {path}' for code, path in enumerate(hdf5_layout.EIG_SOLVE_PATHS)
                       if np.count_nonzero(ways == code))
    cost = f'; {products.mean():.1f} Hessian-vector products per point' if products.size else ''
    cost += f' ({solved})' if solved else ''
    print(f'max_eig {max_eig[finite].min():.4g} .. {max_eig[finite].max():.4g}, min_eig '
          f'{min_eig[finite].min():.4g} .. {min_eig[finite].max():.4g}{worst}' + cost, flush=True)


def plot_results(args, run):
    """|min_eig / max_eig| as a curve (1D) or heat maps (2D), by plot_1D / plot_2D (rank 0 only)."""
    if not run.grid.is_2d:
        from losslandscape.figures import curve_figures
        return curve_figures.plot_1d_eig_ratio(run.surf_file, xmin=run.grid.x.min, xmax=run.grid.x.max,
                                         ratio_max=args.ratio_max, show=args.show)
    from losslandscape.figures import surface_figures
    return surface_figures.plot_2d_eig_ratio(run.surf_file, show=args.show)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    grid_args.validate(parser, args, extra_checks=(grid_args.check_hessian,))
    comm = get_comm(args.mpi)
    run, _ = api.compute_hessian_eigen(RunSettings.from_args(args), comm,
                                              grid_args.solver_settings(args))
    if comm.is_root:
        report_eigenvalues(run.surf_file)
        if args.plot:
            plot_results(args, run)   # the plot modules say what they wrote
    return 0


if __name__ == '__main__':
    run_as_script(main)
