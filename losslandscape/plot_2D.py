"""2D plots of a loss surface: contours, heat map, 3D surface, optimizer trajectories, HTML viewer.

The figures are drawn by surface_figures.py (which the --plot options of plot_surface.py,
plot_hessian_eigen.py and plot_trajectory.py use too); the helpers they share with the 1D figures
and h52vtp.py (reading a surface, derived values, labels, saving figures) live in figures/common.py.
"""
from losslandscape.cli.parsing import ArgumentParser, run_as_script
from losslandscape.errors import UsageError
from losslandscape.figures.common import EIG_RATIO, SURF_NAME_CHOICES
from losslandscape.figures.surface_figures import (
    plot_2d_contour,
    plot_2d_eig_ratio,
    plot_contour_trajectory,
    plot_trajectory,
    write_html_viewer,
)


def get_args_parser():
    parser = ArgumentParser(
        'plot_2D.py',
        description='Plot a 2D loss surface (contours, filled contours, heat map, 3D surface; PDF + '
                    'PNG beside the surface file), an optimizer trajectory, or both. '
                    '--surf_file alone: the surface plots. --proj_file alone: the trajectory. '
                    'Both: contours with the trajectory on top. Points not computed (NaN) or '
                    'diverged (inf) are left out of every plot; in the heat map they are grey (NaN) '
                    'or take the colour bar\'s end colour (inf).')
    parser.add_argument('--surf_file', '-f', default='',
                        help='surface file (.h5) written by plot_surface.py or the original code')
    parser.add_argument('--dir_file', default='',
                        help='direction file; with PCA directions (plot_trajectory.py) the axes are '
                             "labelled with the explained variance, e.g. '1st PC: 84.23 %%'. "
                             "Default with --surf_file: the surface's own direction file")
    parser.add_argument('--proj_file', default='',
                        help='projection file from plot_trajectory.py (proj_xcoord/proj_ycoord); '
                             'its per-checkpoint train_loss, when stored, colours the path')
    parser.add_argument('--surf_name', default='train_loss', metavar='NAME',
                        help='which surface to plot: any value the file holds ('
                             + ', '.join(SURF_NAME_CHOICES) + ', or an objective\'s own, e.g. train_perplexity); '
                             'train_err/test_err are 100 - accuracy, eig_ratio is |min_eig/max_eig|; a name the '
                             'file lacks is refused with the list of those it has (default: %(default)s)')
    parser.add_argument('--vmin', default=0.1, type=float,
                        help='lowest contour level and bottom of the heat map colour scale (default: %(default)s)')
    parser.add_argument('--vmax', default=10, type=float,
                        help='contour levels stop below VMAX; top of the heat map colour scale (default: %(default)s)')
    parser.add_argument('--vlevel', default=0.5, type=float,
                        help='spacing between contour levels (default: %(default)s)')
    parser.add_argument('--zlim', default=None, type=float,
                        help='top of the 3D surface plot: higher values are drawn flat at ZLIM '
                             '(default: no cap, the axis fits the largest finite value)')
    parser.add_argument('--html', action='store_true',
                        help='also write one self-contained interactive HTML file (rotatable 3D '
                             "surface + contour map, plus the trajectory with --proj_file): "
                             "SURF_FILE_<surf_name>_viewer.html, opens offline in any browser")
    parser.add_argument('--show', action='store_true',
                        help='open the figures in a window too (default: write files only, headless)')
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not args.surf_file and not args.proj_file:
        raise UsageError('nothing to plot: pass --surf_file, --proj_file, or both')
    if args.html and not args.surf_file:
        raise UsageError('--html needs --surf_file')
    levels = dict(vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel)
    written = []
    if args.surf_file and args.proj_file:
        written += plot_contour_trajectory(args.surf_file, args.dir_file, args.proj_file,
                                           surf_name=args.surf_name, show=args.show, **levels)
    elif args.proj_file:
        written += plot_trajectory(args.proj_file, args.dir_file, show=args.show)
    elif args.surf_name == EIG_RATIO:
        written += plot_2d_eig_ratio(args.surf_file, dir_file=args.dir_file, show=args.show)
    else:
        written += plot_2d_contour(args.surf_file, dir_file=args.dir_file, surf_name=args.surf_name,
                                   zlim=args.zlim, show=args.show, **levels)
    if args.html:
        written.append(write_html_viewer(args.surf_file, dir_file=args.dir_file, surf_name=args.surf_name,
                                         proj_file=args.proj_file or None))
    return written


if __name__ == '__main__':
    run_as_script(main)
