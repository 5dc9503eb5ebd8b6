"""How sharp is a minimum, as generalization studies measure it: worst-case, SAM, adaptive and
average-case sharpness of the mean objective within a radius rho.

At one model (--model_file), over the same parameters and objective as hessian_spectrum.py:

    python sharpness.py --dataset digits --model cnn_bn --model_file demo_out/model.t7 --rho 0.01 0.05 0.1

For each --rho: worst_case = max over ||e|| <= rho of L(w + e) - L(w) (projected gradient ascent
from SAM's step, +-rho x the top Hessian eigenvector and --restarts random starts: never below
any of them); sam_one_step = L(w + rho g/||g||) - L(w); adaptive = the same maximum over
||e / (|w| + eta)|| <= rho; average = mean of L(w + e) - L(w) over e uniform on the sphere of
radius rho, with its standard error. A table on stdout and an HDF5 file (layout in hdf5_layout.py).
"""
import math
import time

import numpy as np

from losslandscape.cli import grid_args
from losslandscape.cli.parsing import ArgumentParser, check_output_folder, run_as_script
from losslandscape.compute import choosing, timing_search
from losslandscape.curvature import hessian, spectrum
from losslandscape.curvature import sharpness_measures as measures
from losslandscape.engine.run_setup import prepare_point
from losslandscape.io import hdf5_layout as layout
from losslandscape.parallel.mpi_comm import SerialComm


def get_args_parser():
    parser = ArgumentParser('sharpness.py', description=__doc__.split('\n\n')[0])
    grid_args.add_timed_point_script_arguments(parser, 'perturb the parameters (dim > 1)', 'the others stay fixed',
                                               'gradients')
    sharp = parser.add_argument_group('sharpness')
    sharp.add_argument('--rho', nargs='+', type=float, default=list(measures.DEFAULT_RHOS),
                       help='radii of the perturbation ball (Euclidean norm over the parameters), one or several')
    sharp.add_argument('--eta', default=measures.DEFAULT_ETA, type=float,
                       help='adaptive sharpness: the ball is ||e / (|w| + eta)|| <= rho')
    sharp.add_argument('--ascent_steps', default=measures.DEFAULT_ASCENT_STEPS, type=int,
                       help='gradient-ascent steps per start (each costs one gradient over the data)')
    sharp.add_argument('--restarts', default=measures.DEFAULT_RESTARTS, type=int,
                       help='random starts of the ascent, besides SAM\'s step and the top eigenvector')
    sharp.add_argument('--samples', default=measures.DEFAULT_SAMPLES, type=int,
                       help='random perturbations averaged for the average-case sharpness')
    sharp.add_argument('--skip_eigen_start', action='store_true',
                       help='do not start the ascent from +-rho x the top Hessian eigenvector (saves its Lanczos solve)')
    sharp.add_argument('--seed', default=0, type=int, help='seed of the random starts and perturbations')
    output = parser.add_argument_group('output')
    output.add_argument('--sharpness_file', default='', help='the HDF5 file of results (default: beside '
                        '--model_file, named after it, the parameter subset and the data split)')
    return parser


def check_sharpness(parser, args):
    if not all(math.isfinite(r) and r > 0 for r in args.rho):
        parser.error('--rho values must be positive numbers')
    if not (math.isfinite(args.eta) and args.eta >= 0):
        parser.error('--eta must be 0 or more')
    if args.ascent_steps < 0 or args.restarts < 0:
        parser.error('--ascent_steps and --restarts must be 0 or more')
    if args.samples < 2:
        parser.error('--samples must be at least 2 (the average\'s standard error needs two)')
    if args.sharpness_file:
        check_output_folder(args.sharpness_file, '--sharpness_file')


EIGEN_START_GRADIENTS = 20   # the top eigenvector's Lanczos solve: about 10 products of about 2 gradients each
FORWARD_GRADIENTS = 1 / 3    # a loss-only pass, in gradients (a forward pass without the backward)


def estimated_gradients(args):
    """About how many gradients over the data the measurements asked for cost: per radius SAM's
    loss, the ascents from SAM's step, +-the eigenvector and the random starts, the adaptive
    ascents, the average's losses; plus the centre's gradient and the eigenvector's solve."""
    starts = 1 + (0 if args.skip_eigen_start else 2) + args.restarts
    per_rho = (starts + 1 + args.restarts) * (args.ascent_steps + 1) + FORWARD_GRADIENTS * (1 + args.samples)
    return 1 + len(args.rho) * per_rho + (0 if args.skip_eigen_start else EIGEN_START_GRADIENTS)


def main(argv=None):
    args, settings, out_path = grid_args.parse_point_script(get_args_parser(), argv, 'sharpness', check_sharpness)
    comm = SerialComm()
    point = prepare_point(settings, comm)
    params = hessian.hessian_parameters(point.net, args.include_params, args.exclude_params)
    if args.batch_size is None:
        choosing.choose_point_batch_size(comm, point, args.compute_config, lambda: timing_search.GradientSearch(
            point.net, point.objective, point.data, point.device, params, products=estimated_gradients(args)))
    started = time.perf_counter()
    top = None
    if not args.skip_eigen_start:
        operator = hessian.MeanLossHessian(point.net, point.data, point.objective, params=params)
        _, vectors, _ = spectrum.top_eigenpairs(operator.hvp, operator.size, 1, rng=np.random.default_rng(args.seed))
        top = vectors[:, 0]
    loss = measures.PerturbedLoss(point.net, point.data, point.objective, params)
    values = measures.measure(loss, args.rho, args.eta, args.ascent_steps, args.restarts, args.samples, top,
                              np.random.default_rng(args.seed))
    values['rho'] = list(args.rho)
    attrs = {**settings.identity(), 'eta': args.eta, 'ascent_steps': args.ascent_steps, 'restarts': args.restarts,
             'samples': args.samples, 'seed': args.seed, 'num_params': loss.size}
    layout.write_sharpness_file(out_path, values, attrs)
    print(f'{out_path}: {loss.size} parameters, loss {values["loss"]:.6g} at the point; '
          f'{loss.evaluations} passes over the data in {time.perf_counter() - started:.2f} s')
    print(f'{"rho":>10} {"worst case":>12} {"SAM 1-step":>12} {"adaptive":>12} {"average":>12} {"+- stderr":>10}')
    for i, rho in enumerate(args.rho):
        print(f'{rho:>10.4g} {values["worst_case"][i]:>12.6g} {values["sam_one_step"][i]:>12.6g} '
              f'{values["adaptive"][i]:>12.6g} {values["average"][i]:>12.6g} {values["average_stderr"][i]:>10.2g}')
    return 0


if __name__ == '__main__':
    run_as_script(main)
