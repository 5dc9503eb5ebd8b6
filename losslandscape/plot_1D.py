"""1D plots of a loss surface: loss and accuracy curves, several directions overlaid, eigenvalue ratio.

Every figure is written as PDF with a PNG beside it, next to the surface file. Points not computed
(NaN) or diverged (inf) are gaps in the curves. The figures themselves are drawn by curve_figures.py
(which plot_surface.py and plot_hessian_eigen.py --plot use too); this script reads the flags.
"""
from losslandscape.cli.parsing import ArgumentParser, run_as_script
from losslandscape.errors import UsageError
from losslandscape.figures.common import has_values
from losslandscape.figures.curve_figures import (
    DEFAULT_XMAX,
    DEFAULT_XMIN,
    load_1d,
    plot_1d_compare,
    plot_1d_eig_ratio,
    plot_1d_loss_err,
    plot_1d_loss_err_repeat,
)
from losslandscape.io import hdf5_layout as layout


def get_args_parser():
    parser = ArgumentParser(
        'plot_1D.py',
        description='Plot 1D loss and accuracy curves (PDF + PNG beside the surface file). '
                    'With --surf_file: loss/accuracy, training loss and training error figures, plus '
                    'eigenvalue-ratio figures when the file has min_eig/max_eig. With --prefix: the curves '
                    'of PREFIX_IDX.h5 for IDX = IDX_MIN..IDX_MAX overlaid in one figure.')
    parser.add_argument('--surf_file', '-f', default='',
                        help='1D surface file (.h5) written by plot_surface.py or the original code')
    parser.add_argument('--log', action='store_true',
                        help='logarithmic loss axis (adds _log to the loss figure names)')
    parser.add_argument('--xmin', default=DEFAULT_XMIN, type=float,
                        help="left end of the x axis; the default -1 means the surface's own smallest x")
    parser.add_argument('--xmax', default=DEFAULT_XMAX, type=float,
                        help="right end of the x axis; the default 1 means the surface's own largest x")
    parser.add_argument('--loss_max', default=5, type=float,
                        help='top of the loss axis (default: %(default)s); accuracy always spans 0..100')
    parser.add_argument('--ratio_max', default=1.0, type=float,
                        help='top of the eigenvalue-ratio axis (default: %(default)s)')
    parser.add_argument('--show', action='store_true',
                        help='open the figures in a window too (default: write files only, headless)')
    parser.add_argument('--prefix', default='',
                        help="overlay several surfaces named PREFIX_IDX.h5 (e.g. --prefix runs/dir gives "
                             "runs/dir_1.h5 ...); writes PREFIX_1d_loss_err_repeat.pdf; replaces --surf_file. "
                             "Make them with plot_surface.py --idx IDX --surf_file PREFIX_IDX.h5 (each --idx "
                             "draws other random directions)")
    parser.add_argument('--compare', default='', metavar='SURF_FILE',
                        help='a second 1D surface between the same two models (e.g. the straight line, beside '
                             'the curve of --surf_file): one figure of both training losses with their barriers '
                             '(highest loss on [0, 1] above the higher end), SURF_FILE_1d_compare.pdf')
    parser.add_argument('--labels', nargs=2, default=None, metavar=('LABEL', 'COMPARE_LABEL'),
                        help="legend names of --surf_file and --compare (default: what each path is, e.g. "
                             "'Bezier curve' and 'straight line')")
    parser.add_argument('--idx_min', default=1, type=int, help='first IDX for --prefix (default: %(default)s)')
    parser.add_argument('--idx_max', default=10, type=int, help='last IDX for --prefix (default: %(default)s)')
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    limits = dict(xmin=args.xmin, xmax=args.xmax, show=args.show)
    if args.prefix and args.compare:
        raise UsageError('--compare draws two surfaces beside --surf_file; --prefix draws several: pass one of them')
    if args.prefix:
        return plot_1d_loss_err_repeat(args.prefix, args.idx_min, args.idx_max, loss_max=args.loss_max,
                                       log=args.log, **limits)
    if not args.surf_file:
        raise UsageError('pass --surf_file (one surface) or --prefix (several)')
    if args.labels and not args.compare:
        raise UsageError('--labels names the two paths of --compare: add --compare')
    if args.compare:
        return plot_1d_compare(args.surf_file, args.compare, labels=args.labels, loss_max=args.loss_max,
                               log=args.log, **limits)
    surface = load_1d(args.surf_file)
    has_loss = has_values(surface, layout.TRAIN_LOSS)
    has_eig = has_values(surface, layout.MIN_EIG) and has_values(surface, layout.MAX_EIG)
    if not (has_loss or has_eig):
        raise UsageError(f'surface file {args.surf_file!r} has neither {layout.TRAIN_LOSS!r} nor '
                         f'{layout.MIN_EIG!r}/{layout.MAX_EIG!r} to plot')
    written = []
    if has_loss:
        written += plot_1d_loss_err(args.surf_file, loss_max=args.loss_max, log=args.log, **limits)
    if has_eig:
        written += plot_1d_eig_ratio(args.surf_file, ratio_max=args.ratio_max, **limits)
    return written


if __name__ == '__main__':
    run_as_script(main)
