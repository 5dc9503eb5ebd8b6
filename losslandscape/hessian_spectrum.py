"""How sharp is a minimum, in numbers: the Hessian's top eigenpairs, trace and spectral density.

At one model (--model_file), over the same parameters and the same mean objective as
plot_hessian_eigen.py (weights with dim > 1, --include_params / --exclude_params, any --loss_name):

    python hessian_spectrum.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 \\
        --top_k 5 --trace --density --save_directions demo_out/sharpest.h5
    python plot_surface.py ... --dir_file demo_out/sharpest.h5      (the landscape along them)

--top_k: the K largest eigenvalues by Lanczos, each with its residual ||H v - lambda v||.
--trace: exact on the Krylov space of the --top_k solve (extended by a quarter of --trace_hvps),
Hutchinson's estimate on the rest, with a standard error.
--density: stochastic Lanczos quadrature with the top eigenpairs deflated, smoothed by Gaussians,
on a grid, plotted with a log density axis (PNG + PDF). --save_directions: the top two
eigenvectors as a direction file (unit norm over the Hessian's parameters, zero elsewhere).
Everything lands in one HDF5 spectrum file (layout in hdf5_layout.py); rerunning the same
command reuses what it holds (see spectrum.py for the methods). Under `mpiexec -n N ... --mpi`
every product is split by data shard (each rank every N-th batch, the products summed), and
every rank runs the same solves on the summed products.
"""
import os
import time

import numpy as np
import torch

from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser, check_output_folder, run_as_script
from losslandscape.compute import choosing, timing_search
from losslandscape.curvature import hessian, spectrum
from losslandscape.directions import normalization
from losslandscape.engine.run_setup import PointSettings, prepare_point
from losslandscape.errors import UsageError
from losslandscape.figures.spectrum_figures import density_title
from losslandscape.io import hdf5_layout as layout
from losslandscape.parallel.mpi_comm import fail_all_ranks, get_comm


def get_args_parser():
    parser = ArgumentParser('hessian_spectrum.py', description=__doc__.split('\n\n')[0])
    compute = grid_args.add_timed_point_script_arguments(
        parser, 'take the Hessian over the parameters (dim > 1)', 'the others are held fixed', 'Hessian-vector products')
    compute.add_argument('--mpi', action='store_true', help='split every Hessian-vector product over the MPI '
                         'ranks by data shard (each rank every N-th batch, the products summed); launch with '
                         'mpiexec -n N; every rank runs the same solves, rank 0 writes and prints')

    spec = parser.add_argument_group('spectrum')
    spec.add_argument('--top_k', default=spectrum.DEFAULT_TOP_K, type=int,
                      help='how many of the largest eigenvalues (and eigenvectors) to compute')
    spec.add_argument('--eig_tol', default=spectrum.DEFAULT_EIG_TOL, type=float,
                      help='the Lanczos iteration stops when every top eigenpair\'s residual ||Hv - lambda v|| is '
                      'at most this times the largest eigenvalue\'s magnitude (the residuals are reported)')
    spec.add_argument('--trace', action='store_true', help='estimate the trace, with its standard error (exact on '
                      'the Krylov space of the top-k solve, Hutchinson\'s estimate on the rest)')
    spec.add_argument('--trace_hvps', default=spectrum.DEFAULT_TRACE_HVPS, type=int,
                      help='Hessian-vector products for the trace beyond those of the top-k solve (whose Krylov '
                      'space it reuses): a quarter extend that space, where the trace is taken exactly, three '
                      'quarters are random probes of the rest; when they could span all parameters the trace is '
                      'exact')
    spec.add_argument('--density', action='store_true', help='the spectral density by stochastic Lanczos '
                      'quadrature, stored on a grid and plotted beside the spectrum file (PNG + PDF)')
    spec.add_argument('--density_starts', default=spectrum.DEFAULT_DENSITY_STARTS, type=int,
                      help='random Lanczos starts (each costs --density_steps products)')
    spec.add_argument('--density_steps', default=spectrum.DEFAULT_DENSITY_STEPS, type=int,
                      help='Lanczos steps per start (Ritz values per start)')
    spec.add_argument('--density_sigma', default=spectrum.DEFAULT_DENSITY_SIGMA, type=float,
                      help='width of the Gaussian smoothing, as a fraction of the spectrum\'s range')
    spec.add_argument('--seed', default=0, type=int, help='seed of the random start vectors and probes')

    output = parser.add_argument_group('output')
    output.add_argument('--spectrum_file', default='', help='the HDF5 file of results (default: beside '
                        '--model_file, named after it, the parameter subset and the data split)')
    output.add_argument('--save_directions', default='', metavar='PATH', help='write the top two eigenvectors '
                        'as a direction file for plot_surface.py --dir_file (needs --top_k >= 2)')
    for axis in 'xy':
        output.add_argument(f'--{axis}norm', default=None, choices=normalization.NORMS,
                            help=f'normalization of the saved {axis} direction (the {"first" if axis == "x" else "second"} '
                            'eigenvector); default none: unit norm')
    return parser


def check_spectrum(parser, args):
    if args.top_k < 1:
        parser.error('--top_k must be at least 1')
    if not 0 < args.eig_tol < 1:
        parser.error('--eig_tol must be in (0, 1)')
    if args.trace_hvps < spectrum.MIN_TRACE_HVPS:
        parser.error(f'--trace_hvps must be at least {spectrum.MIN_TRACE_HVPS} (one extends the Krylov space, the '
                     'others probe the rest: two at least, for a standard error)')
    if args.density_starts < 1 or args.density_steps < 2:
        parser.error('--density_starts must be at least 1 and --density_steps at least 2')
    if not 0 < args.density_sigma < 1:
        parser.error('--density_sigma must be in (0, 1): a fraction of the spectrum\'s range')
    if args.save_directions and args.top_k < 2:
        parser.error('--save_directions writes the top two eigenvectors: --top_k must be at least 2')
    if (args.xnorm or args.ynorm) and not args.save_directions:
        parser.error('--xnorm/--ynorm shape the saved directions: add --save_directions')
    for path, what in ((args.spectrum_file, '--spectrum_file'), (args.save_directions, '--save_directions')):
        if path:
            check_output_folder(path, what)
    if args.spectrum_file and os.path.exists(args.spectrum_file):
        layout.read_spectrum_file(args.spectrum_file)   # a foreign or damaged file is refused, untouched


def part_settings(args):
    """What each part of the file was computed with: a part is reused when these agree."""
    return {layout.EIG_SETTINGS: {'top_k': args.top_k, 'eig_tol': args.eig_tol, 'seed': args.seed},
            layout.TRACE_SETTINGS: {'trace_hvps': args.trace_hvps, 'seed': args.seed, 'deflated': args.top_k,
                                    'eig_tol': args.eig_tol, 'method': 'krylov'},
            layout.DENSITY_SETTINGS: {'starts': args.density_starts, 'steps': args.density_steps,
                                      'sigma': args.density_sigma, 'seed': args.seed, 'deflated': args.top_k,
                                      'eig_tol': args.eig_tol}}


def stored_parts(path, identity):
    """(data, attrs) already in the spectrum file (empty when there is none); UsageError when it
    was made for another model, data, objective or parameter subset."""
    if not os.path.exists(path):
        return {}, {}
    data, attrs = layout.read_spectrum_file(path)
    for key, wanted in identity.items():
        if key in attrs and attrs[key] != wanted:
            raise UsageError(f'spectrum file {path!r} was made with {key}={attrs[key]!r}, not {wanted!r}; '
                             'pass another --spectrum_file')
    return data, attrs


def reusable(data, attrs, part, settings):
    return attrs.get(part) == settings and all(key in data for key in layout.SPECTRUM_PARTS[part])


def directions_from(vectors, net, params, norms):
    """The top two eigenvectors as a direction file's x and y (net.parameters() order, zero for the
    tensors outside the Hessian), normalised per --xnorm/--ynorm or else left at unit norm."""
    chosen = {id(p) for p in params}
    out = []
    for column, norm in zip(range(2), norms):
        pieces, start = [], 0
        for p in net.parameters():
            if id(p) in chosen:
                d = torch.as_tensor(vectors[column][start:start + p.numel()], dtype=torch.float32).view(p.shape)
                start += p.numel()
                if norm:
                    normalization.normalize_direction(d, p.detach().cpu().float(), norm)
            else:
                d = torch.zeros(p.shape, dtype=torch.float32)
            pieces.append(d)
        out.append(pieces)
    return out


def plot_density(grid, density, path_base, title):
    """The density figure (figures.spectrum_density) written as path_base + '.pdf'/'.png'."""
    from losslandscape.figures.common import save_figure
    from losslandscape.figures.spectrum_figures import density_figure
    return save_figure(density_figure(grid, density, title), path_base)


def main(argv=None):
    args, settings, out_path = grid_args.parse_point_script(get_args_parser(), argv, 'spectrum', check_spectrum)
    identity = settings.identity()
    data, attrs = stored_parts(out_path, identity)

    comm = get_comm(args.mpi)
    try:
        return compute_spectrum(args, comm, out_path, identity, data, attrs)
    except UsageError:
        raise   # the ranks compute alike, so all of them refuse alike: rank 0 says it once
    except Exception as err:
        if comm.size == 1:
            raise
        fail_all_ranks(comm, err)   # one rank failing alone would leave the others waiting in a sum


def estimated_products(args):
    """About how many Hessian-vector products the parts asked for take (the top-k solve's count
    depends on the spectrum: a rough 10 per eigenpair, what the digits CNN needed at the default tol)."""
    return 10 * args.top_k + (args.trace_hvps if args.trace else 0) + \
        (args.density_starts * args.density_steps if args.density else 0)


def choose_batch_size(args, comm, point, params):
    """--batch_size not given: the products' batch size, timed on rank 0 and taken by every rank
    (choosing.choose_point_batch_size)."""
    if args.batch_size is None:
        choosing.choose_point_batch_size(comm, point, args.compute_config, lambda: timing_search.HessianSearch(
            point.net, point.objective, point.data, point.device, params, products=estimated_products(args)))


def compute_spectrum(args, comm, out_path, identity, data, attrs):
    """The parts asked for and not yet stored, on every rank alike (rank 0 writes and prints)."""
    point = prepare_point(PointSettings.from_args(args), comm)
    params = hessian.hessian_parameters(point.net, args.include_params, args.exclude_params)
    choose_batch_size(args, comm, point, params)
    operator = hessian.MeanLossHessian(point.net, point.data, point.objective, params=params, share=comm.local_size,
                                       comm=comm)
    n = operator.size
    if 'num_params' in attrs and attrs['num_params'] != n:
        raise UsageError(f'spectrum file {out_path!r} was made over {attrs["num_params"]} parameters, not {n}; '
                         'pass another --spectrum_file')

    def product(v):
        return operator.hvp(v)
    wanted = part_settings(args)
    attrs = {**attrs, **identity, 'num_params': n}
    started = time.perf_counter()

    def finish(part, new_data, hvps):
        data.update(new_data)
        attrs[part] = wanted[part]
        attrs[part + '_hvps'] = hvps
        data[layout.HVP_COUNT] = float(sum(attrs.get(p + '_hvps', 0) for p in layout.SPECTRUM_PARTS))
        if comm.is_root:
            layout.write_spectrum_file(out_path, data, attrs)   # each finished part survives a later kill

    def rng(part):
        return np.random.default_rng((args.seed, list(layout.SPECTRUM_PARTS).index(part)))

    need_eigen = args.top_k and (not reusable(data, attrs, layout.EIG_SETTINGS, wanted[layout.EIG_SETTINGS]))
    need_trace = args.trace and not reusable(data, attrs, layout.TRACE_SETTINGS, wanted[layout.TRACE_SETTINGS])
    basis = None   # the top-k solve's Lanczos basis, which the trace extends
    if need_eigen or need_trace:
        # With the eigenpairs already stored and the trace still to do (a run stopped between the
        # two), the same solve is made again for its basis: the trace then equals an uninterrupted run's.
        before = operator.hvp_count
        basis = spectrum.Lanczos(product, rng(layout.EIG_SETTINGS).standard_normal(n))
        values, vectors, residuals = spectrum.top_eigenpairs(product, n, min(args.top_k, n), args.eig_tol,
                                                             lanczos=basis)
        if need_eigen:
            finish(layout.EIG_SETTINGS, {layout.EIGENVALUES: values, layout.RESIDUALS: residuals,
                                         layout.EIGENVECTORS: vectors.T.astype(np.float32)},
                   operator.hvp_count - before)
    values, residuals = data[layout.EIGENVALUES], data[layout.RESIDUALS]
    vectors = data[layout.EIGENVECTORS].astype(np.float64)
    if need_trace:
        before = operator.hvp_count
        trace, stderr = spectrum.krylov_trace(product, n, args.trace_hvps, rng(layout.TRACE_SETTINGS),
                                              matmat=operator.hvp_block, lanczos=basis)
        finish(layout.TRACE_SETTINGS, {layout.TRACE: trace, layout.TRACE_STDERR: stderr}, operator.hvp_count - before)
    if args.density and not reusable(data, attrs, layout.DENSITY_SETTINGS, wanted[layout.DENSITY_SETTINGS]):
        before = operator.hvp_count
        runs = spectrum.slq_density(product, n, args.density_starts, args.density_steps, rng(layout.DENSITY_SETTINGS),
                                    deflate=(values, vectors.T), matmat=operator.hvp_block)
        grid, density = spectrum.smoothed_density(runs, args.density_sigma)
        width = max(len(nodes) for nodes, _ in runs)
        pad = lambda arrays: np.array([np.pad(a, (0, width - len(a)), constant_values=np.nan) for a in arrays])
        finish(layout.DENSITY_SETTINGS, {layout.DENSITY_GRID: grid, layout.DENSITY: density,
                                         layout.SLQ_NODES: pad([r[0] for r in runs]),
                                         layout.SLQ_WEIGHTS: pad([r[1] for r in runs])}, operator.hvp_count - before)
    if not comm.is_root:
        return 0
    report(out_path, data, n, time.perf_counter() - started, operator.hvp_count)
    if args.density:
        plot_density(data[layout.DENSITY_GRID], data[layout.DENSITY], out_path + '_density',
                     density_title(n, args.density_starts))
    if args.save_directions:
        xdirection, ydirection = directions_from(vectors[:2], point.net, params, (args.xnorm, args.ynorm))
        layout.write_direction_file(args.save_directions, xdirection, ydirection, attrs={
            'method': 'hessian_eigenvectors', 'model': args.model, 'model_file': args.model_file,
            'dir_type': 'weights', 'xnorm': args.xnorm, 'ynorm': args.ynorm, 'eigenvalues': [float(v) for v in values[:2]],
            'include_params': args.include_params, 'exclude_params': args.exclude_params})
        print(f'wrote {args.save_directions}: the top two eigenvectors as x and y directions '
              f'(plot_surface.py --dir_file {args.save_directions})')
    return 0


def report(path, data, n, seconds, hvps_now):
    print(f'{path}: Hessian over {n} parameters; {hvps_now} Hessian-vector products now '
          f'({seconds:.2f} s), {data.get(layout.HVP_COUNT, 0):.0f} for everything stored')
    if layout.EIGENVALUES in data:
        for i, (value, residual) in enumerate(zip(data[layout.EIGENVALUES], data[layout.RESIDUALS]), 1):
            print(f'  eigenvalue {i}: {value:.6g}  (residual {residual:.2e})')
    if layout.TRACE in data:
        print(f'  trace: {float(data[layout.TRACE]):.6g} +- {float(data[layout.TRACE_STDERR]):.2g} (standard error)')
    if layout.DENSITY in data:
        grid, density = data[layout.DENSITY_GRID], data[layout.DENSITY]
        print(f'  density: {len(grid)} points on [{grid[0]:.4g}, {grid[-1]:.4g}], '
              f'mass {np.trapezoid(density, grid):.4f}')


if __name__ == '__main__':
    run_as_script(main)
