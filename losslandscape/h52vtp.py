"""Convert a 2D surface file to a VTK PolyData file (.vtp) for ParaView: one quad per grid cell.

Points are (x, y, z) with z the surface value (after --interp, --zmax, --log, in that order, as in
the original); point data 'zvalue' holds the same z, cell data 'averaged zvalue' the mean of each
quad's corners. Points are numbered like the surface array: point i * nx + j is (x[j], y[i]).

Points whose z is not finite (not computed, NaN, inf not clipped by --zmax, log of a value <= -0.1)
are dropped together with every quad touching them, so ParaView shows a hole there.
"""
import numpy as np

from losslandscape.cli.parsing import ArgumentParser, run_as_script
from losslandscape.errors import UsageError
from losslandscape.figures.common import SURF_NAME_CHOICES, describe_gaps, load_surface, surface_values
from losslandscape.io.file_safety import atomic_path

LOG_OFFSET = 0.1   # --log plots log(z + 0.1), the original's choice


def vtp_path(surf_file, surf_name, zmax=-1, log=False):
    """The original's output name: surf_file_<surf_name>[_zmax=<zmax>][_log].vtp"""
    name = f'{surf_file}_{surf_name}'
    if zmax > 0:
        name += f'_zmax={zmax}'
    if log:
        name += '_log'
    return name + '.vtp'


def resample(x, y, Z, num):
    """Z on a num x num grid spanning the same ranges, by a bicubic spline (lower order on axes
    with fewer than 4 points), never below Z's smallest value. Returns (x, y, Z)."""
    from scipy.interpolate import RectBivariateSpline
    if len(x) < 2 or len(y) < 2:
        raise UsageError(f'--interp needs at least 2 points on each axis (the grid is {len(y)} x {len(x)})')
    if not np.isfinite(Z).all():
        raise UsageError(f'--interp needs every point computed and finite, but {int((~np.isfinite(Z)).sum())} '
                         'are not; drop --interp (missing points become holes instead)')
    # Z[i, j] = f(x[j], y[i]), so y is the spline's first axis: kx is the degree along y and ky
    # along x. Each must be below its own axis's point count (1 for a 2-point axis).
    degree_along_y, degree_along_x = min(3, len(y) - 1), min(3, len(x) - 1)
    spline = RectBivariateSpline(y, x, Z, kx=degree_along_y, ky=degree_along_x)
    new_x, new_y = np.linspace(x[0], x[-1], num), np.linspace(y[0], y[-1], num)
    # A cubic spline overshoots beside steep walls: below a narrow valley's floor it can dip far
    # under every computed value (to -0.47 where the grid's lowest loss is 0.238), and --log then
    # turns those points into holes. A spline must not invent a lower value than any computed
    # point, so it is clamped at the grid's minimum (the overshoot above needs no such care).
    return new_x, new_y, np.maximum(spline(new_y, new_x), Z.min())


def surface_heights(x, y, Z, *, zmax=-1, log=False, interp=-1):
    """(x, y, z grid, log_dropped) as written to the .vtp: resampled, clipped at zmax, then
    log(z + 0.1). ``log_dropped``: how many finite values the log made NaN (values <= -0.1)."""
    if interp > 0:
        x, y, Z = resample(x, y, Z, interp)
    Z = np.array(Z, dtype=np.float64)
    if zmax > 0:
        Z = np.minimum(Z, zmax)  # NaN stays NaN; +inf becomes zmax
    log_dropped = 0
    if log:
        finite_before_log = np.isfinite(Z)
        with np.errstate(divide='ignore', invalid='ignore'):
            Z = np.log(Z + LOG_OFFSET)
        log_dropped = int((finite_before_log & ~np.isfinite(Z)).sum())
    return x, y, Z, log_dropped


def grid_polydata(x, y, Z):
    """A vtkPolyData of the grid points with finite Z and the quads whose 4 corners are all kept."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    ny, nx = Z.shape
    X, Y = np.meshgrid(x, y)
    keep = np.isfinite(Z).ravel()
    new_id = np.cumsum(keep) - 1   # renumbering after dropping points
    xyz = np.column_stack([X.ravel(), Y.ravel(), Z.ravel()])[keep]

    corner = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]).ravel()
    quads = np.column_stack([corner, corner + 1, corner + nx + 1, corner + nx])
    quads = quads[keep[quads].all(axis=1)]
    cell_means = Z.ravel()[quads].mean(axis=1)

    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(xyz), deep=True))
    cells = vtkCellArray()
    offsets = np.arange(0, 4 * len(quads) + 1, 4, dtype=np.int64)
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(new_id[quads].ravel(), dtype=np.int64), deep=True))
    poly = vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    poly.GetPointData().SetScalars(_named_array(Z.ravel()[keep], 'zvalue'))
    poly.GetCellData().SetScalars(_named_array(cell_means, 'averaged zvalue'))
    return poly


def _named_array(values, name):
    from vtkmodules.util.numpy_support import numpy_to_vtk
    array = numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
    array.SetName(name)
    return array


def write_vtp(poly, path):
    """Write ``poly`` with VTK's XML writer under a temporary name, then rename it into place."""
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter
    with atomic_path(path) as tmp:
        writer = vtkXMLPolyDataWriter()
        writer.SetFileName(tmp)
        writer.SetInputData(poly)
        if writer.Write() != 1:
            raise UsageError(f'VTK could not write {path!r} (disk full or folder not writable?)')


def h5_to_vtp(surf_file, *, surf_name='train_loss', zmax=-1, log=False, interp=-1, output=None):
    """Convert ``surf_name`` of a 2D surface file to a .vtp file; return its path."""
    if interp == 1:
        raise UsageError('--interp 1: pass at least 2 (points per axis), or -1 for no resampling')
    surface = load_surface(surf_file, dims=2)
    Z = surface_values(surface, surf_name)
    note = describe_gaps(surf_name, Z)
    if note and interp <= 0:
        print(note.replace('left out of the plot', 'dropped with the quads touching them'))
    x, y, Z, log_dropped = surface_heights(surface.xcoordinates, surface.ycoordinates, Z, zmax=zmax, log=log,
                                           interp=interp)
    if log_dropped:
        # Said like the note above: points that vanish from the .vtp are never dropped silently.
        print(f'note: {surf_name}: {log_dropped} point(s) <= -{LOG_OFFSET:g} have no log(value + {LOG_OFFSET:g}); '
              'dropped with the quads touching them')
    poly = grid_polydata(x, y, Z)
    if poly.GetNumberOfPoints() == 0:
        raise UsageError(f'surface file {surf_file!r} has no finite {surf_name!r} value to write')
    path = output or vtp_path(surf_file, surf_name, zmax, log)
    write_vtp(poly, path)
    print(f'wrote {path} ({poly.GetNumberOfPoints()} points, {poly.GetNumberOfPolys()} quads)')
    return path


def get_args_parser():
    parser = ArgumentParser(
        'h52vtp.py',
        description='Convert a 2D surface (.h5) to a VTK XML PolyData file (.vtp) to open in ParaView: '
                    'points (x, y, value) over the grid, one quad per grid cell, the value as point data '
                    "'zvalue'. Points not computed or not finite are dropped with the quads touching them.")
    parser.add_argument('--surf_file', '--file', '-f', default='', dest='surf_file',
                        help='surface file (.h5) written by plot_surface.py or the original code')
    parser.add_argument('--surf_name', default='train_loss', metavar='NAME',
                        help='which surface to convert: any value the file holds ('
                             + ', '.join(SURF_NAME_CHOICES) + ', or an objective\'s own, e.g. train_perplexity); '
                             'train_err/test_err are 100 - accuracy, eig_ratio is |min_eig/max_eig|; a name the '
                             'file lacks is refused with the list of those it has (default: %(default)s)')
    parser.add_argument('--zmax', default=-1, type=float,
                        help='clip values above ZMAX to ZMAX (diverged +inf points too) so one '
                             'huge value does not flatten the picture; <= 0 (default -1): no clipping. '
                             "Adds '_zmax=ZMAX' to the output name")
    parser.add_argument('--log', action='store_true',
                        help="write log(value + 0.1) instead of the value (applied after --zmax); adds '_log' to the name")
    parser.add_argument('--interp', default=-1, type=int,
                        help='resample to INTERP x INTERP points with a bicubic spline before clipping '
                             '(e.g. 1000 for a smooth render), never below the lowest computed value; '
                             'needs every point computed and finite. '
                             '<= 0 (default -1): write the grid as computed')
    parser.add_argument('--output', '-o', default=None,
                        help='output path (default: SURF_FILE_<surf_name>[_zmax=ZMAX][_log].vtp beside the surface file)')
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if not args.surf_file:
        raise UsageError('--surf_file is required')
    return h5_to_vtp(args.surf_file, surf_name=args.surf_name, zmax=args.zmax, log=args.log,
                     interp=args.interp, output=args.output)


if __name__ == '__main__':
    run_as_script(main)
