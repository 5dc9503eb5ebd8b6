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
import sys

import numpy as np

import hdf5_layout
import hessian
import plot_surface
from cli import ArgumentParser, run_main
from mpi_comm import get_comm
from run_setup import prepare_run
from surface_engine import run_grid


def get_args_parser():
    parser = ArgumentParser('plot_hessian_eigen.py', description=__doc__.split('\n\n')[0],
                            parents=[plot_surface.get_args_parser(add_help=False, loss_plot_options=False)])
    eigen = parser.add_argument_group('hessian')
    eigen.add_argument('--eig_tol', default=hessian.DEFAULT_EIG_TOL, type=float,
                       help='ARPACK stopping tolerance of each Lanczos solve: residual <= tol x Ritz value '
                       '(the smallest eigenvalue is solved shifted, so its error is about '
                       'tol x (1.1 max_eig - min_eig); default %(default)s, as the original)')
    eigen.add_argument('--eig_maxiter', default=hessian.DEFAULT_EIG_MAXITER, type=int,
                       help='most ARPACK restarts per solve (each costs about --eig_ncv Hessian-vector '
                       'products); a point that does not converge stores NaN (default %(default)s)')
    eigen.add_argument('--eig_ncv', default=hessian.DEFAULT_EIG_NCV, type=int,
                       help='Lanczos vectors per restart: a solve costs at least ncv + 1 products; smaller '
                       'saves products on fine grids thanks to the warm start, larger is more robust '
                       '(default %(default)s)')
    eigen.add_argument('--warm_start', action='store_true',
                       help='start each point\'s solver from the eigenvectors of the rank\'s previous point '
                       '(fewer products with a small --eig_ncv on fine grids; the values then depend on '
                       'the order of the points, so a resumed or MPI run agrees with a serial one only '
                       'within --eig_tol instead of bit for bit, which holds without it for runs with the '
                       'same --threads per rank)')
    eigen.add_argument('--trace', action='store_true',
                       help='also store a Hutchinson estimate of the Hessian trace at every point')
    eigen.add_argument('--trace_samples', default=hessian.DEFAULT_TRACE_SAMPLES, type=int,
                       help='Rademacher vectors per trace estimate, seeded by the point index '
                       '(default %(default)s)')
    eigen.add_argument('--ratio_max', default=1.0, type=float,
                       help='upper limit of the |min_eig / max_eig| axis of the 1D --plot (default %(default)s)')
    return parser


def validate_args(parser, args):
    plot_surface.validate_args(parser, args)
    if args.eval_test:
        parser.error('--eval_test: eigenvalues are of the training loss only; '
                     'compute test_loss with plot_surface.py (it can share the surface file)')
    if args.compile:
        parser.error('--compile: torch.compile does not support the double back-propagation of '
                     'Hessian-vector products')
    if args.points_per_call > 1:
        parser.error('--points_per_call: Hessian eigenvalues are solved one point at a time')
    if args.amp:
        parser.error('--amp: Hessian-vector products need float32 (bfloat16 rounding swamps the small eigenvalues)')
    if args.fold_bn:
        parser.error('--fold_bn: the Hessian is taken with respect to the unfolded weights; run without it')
    if not (np.isfinite(args.eig_tol) and 0 < args.eig_tol < 1):
        parser.error('--eig_tol must be in (0, 1)')
    if args.eig_maxiter < 1:
        parser.error('--eig_maxiter must be at least 1')
    if args.eig_ncv < 2:
        parser.error('--eig_ncv must be at least 2 (ARPACK needs more vectors than eigenvalues)')
    if args.trace_samples < 1:
        parser.error('--trace_samples must be at least 1')
    if not (np.isfinite(args.ratio_max) and args.ratio_max > 0):
        parser.error('--ratio_max must be a positive number')


EIGEN_NAMES = (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)
# Recorded with the eigenvalues, but never a reason to solve again: files of the original code lack it.
BY_PRODUCTS = (hdf5_layout.HVP_COUNT,)


def value_names(args):
    names = [*EIGEN_NAMES, *BY_PRODUCTS]
    return names + [hdf5_layout.TRACE] if args.trace else names


def make_point_evaluator(run):
    """evaluate_point(k): move the model to grid point k, return its extreme eigenvalues.

    One tracker per rank: with --warm_start each point starts from the eigenvectors of the rank's
    previous point (under MPI that is the point nranks before it, still a near neighbour)."""
    args = run.args
    operator = hessian.MeanLossHessian(run.eval_net, run.train_data, args.loss_name, args.batch_size)
    tracker = hessian.EigenTracker(args.eig_tol, args.eig_maxiter, args.eig_ncv, warm_start=args.warm_start)

    def evaluate_point(k, names):
        """The values ``names`` (those point k misses) at point k: the eigenvalue solves run only
        when an eigenvalue is missing, the trace only when the trace is (adding --trace to a
        finished file costs the trace alone)."""
        x, y = run.move_to(k)
        values = {}
        if set(EIGEN_NAMES) & set(names):
            result = tracker.solve(operator)
            if result.failure:
                where = f'x={x:g}' + ('' if y is None else f', y={y:g}')
                print(f'warning: point {k} ({where}): {result.failure}; stored NaN', file=sys.stderr, flush=True)
            # hvp_count: the products of the two eigenvalue solves (not the trace samples).
            values = {hdf5_layout.MAX_EIG: result.max_eig, hdf5_layout.MIN_EIG: result.min_eig,
                      hdf5_layout.HVP_COUNT: float(result.hvp_count)}
        if hdf5_layout.TRACE in names:
            rng = np.random.default_rng((hessian.TRACE_SEED, int(k)))
            values[hdf5_layout.TRACE] = operator.trace(args.trace_samples, rng)
        return values
    return evaluate_point


def report_eigenvalues(surf_file):
    """One line on the stored eigenvalues: their ranges, the worst |min/max| and the products used."""
    surface = hdf5_layout.read_surface(surf_file)
    done = surface.done[hdf5_layout.MAX_EIG] & surface.done[hdf5_layout.MIN_EIG]
    max_eig, min_eig = surface.values[hdf5_layout.MAX_EIG][done], surface.values[hdf5_layout.MIN_EIG][done]
    finite = np.isfinite(max_eig) & np.isfinite(min_eig) & (max_eig != 0)
    if not finite.any():
        return
    ratio = np.abs(min_eig[finite] / max_eig[finite])
    products = surface.values[hdf5_layout.HVP_COUNT][surface.done[hdf5_layout.HVP_COUNT]]
    # Points from a file of the original code have no count.
    cost = f'; {products.mean():.1f} Hessian-vector products per point' if products.size else ''
    print(f'max_eig {max_eig[finite].min():.4g} .. {max_eig[finite].max():.4g}, min_eig '
          f'{min_eig[finite].min():.4g} .. {min_eig[finite].max():.4g}, |min/max| <= {ratio.max():.3g}'
          + cost, flush=True)


def plot_results(args, run):
    """|min_eig / max_eig| as a curve (1D) or heat maps (2D), by plot_1D / plot_2D (rank 0 only)."""
    if not run.grid.is_2d:
        import plot_1D
        return plot_1D.plot_1d_eig_ratio(run.surf_file, xmin=run.grid.x.min, xmax=run.grid.x.max,
                                         ratio_max=args.ratio_max, show=args.show)
    import plot_2D
    return plot_2D.plot_2d_eig_ratio(run.surf_file, show=args.show)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    comm = get_comm(args.mpi)
    run = prepare_run(args, comm, value_names(args), BY_PRODUCTS)
    evaluate_point = make_point_evaluator(run)
    summary = run_grid(comm, run.grid, run.open_writer,
                       lambda points: [evaluate_point(k, names) for k, names in points],
                       desc='hessian eigenvalues')
    if comm.is_root:
        plot_surface.report(summary, run)
        report_eigenvalues(run.surf_file)
        if args.plot:
            plot_results(args, run)   # the plot modules say what they wrote
    return 0


if __name__ == '__main__':
    run_main(main)
