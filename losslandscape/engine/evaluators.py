"""What computes a grid point's values: the objective's values (one point at a time, or several
stacked points in one batched pass) and the Hessian's extreme eigenvalues and trace.

Each ``make_*`` takes a run_setup.Run and returns ``evaluate_points([(k, names), ...]) ->
[{name: float}, ...]`` for surface_engine.run_grid, computing at least ``names`` (the values
point k misses) and never more than it must (a file that has train_loss and now gets test_loss
does not pay for train_loss again).
"""
import sys

import numpy as np

from losslandscape.compute import point_batching
from losslandscape.curvature import hessian
from losslandscape.io import hdf5_layout
from losslandscape.objectives import objective


def make_loss_evaluator(run):
    """The objective's values (train_loss, train_acc, ...) at grid points: moving the model point
    by point, or with --points_per_call > 1 all of a call's points in one batched pass."""
    settings = run.settings

    def needed_datasets(names):
        # A data set is evaluated when any of its values is missing (they all come from one pass).
        return [(prefix, data) for prefix, data in run.datasets()
                if any(name.startswith(prefix + '_') for name in names)]

    def evaluate_point(k, names):
        run.move_to(k)
        values = {}
        for prefix, data in needed_datasets(names):
            for key, value in objective.evaluate(run.eval_net, data, run.objective, settings.amp).items():
                values[f'{prefix}_{key}'] = value
        return values

    if settings.points_per_call == 1:
        return lambda points: [evaluate_point(k, names) for k, names in points]
    stack = point_batching.StackedPoints(run.net, settings.dir_type, run.base, run.xdirection, run.ydirection)

    def evaluate_points(points):
        coords = [run.grid.point(k) for k, _ in points]
        tensors = stack.stacked([(x, 0.0 if y is None else y) for x, y in coords])
        values = [{} for _ in points]
        for prefix, data in needed_datasets([n for _, names in points for n in names]):
            results = point_batching.evaluate_stacked(run.net, tensors, data, run.objective, settings.amp)
            for point, result in zip(values, results):
                point.update({f'{prefix}_{key}': value for key, value in result.items()})
        return values
    return evaluate_points


EIGEN_NAMES = (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)
# Recorded with the eigenvalues, but never a reason to solve again: files of the original code lack it.
EIGEN_BY_PRODUCTS = (hdf5_layout.HVP_COUNT,)


def eigen_value_names(trace):
    names = [*EIGEN_NAMES, *EIGEN_BY_PRODUCTS]
    return names + [hdf5_layout.TRACE] if trace else names


def make_hessian_evaluator(run, solver):
    """The extreme eigenvalues (and with ``solver.trace_samples``, the trace) of the Hessian of
    the run's mean objective at grid points. ``solver``: a hessian.SolverSettings.

    One tracker per rank: with warm starts each point starts from the eigenvectors of the rank's
    previous point (under MPI that is the point nranks before it, still a near neighbour)."""
    params = hessian.hessian_parameters(run.net, run.settings.directions.include_params,
                                        run.settings.directions.exclude_params)
    operator = hessian.MeanLossHessian(run.eval_net, run.train_data, run.objective, params=params,
                                       share=run.comm.local_size)
    tracker = hessian.EigenTracker(solver.tol, solver.maxiter, solver.ncv, warm_start=solver.warm_start)

    def evaluate_point(k, names):
        """The eigenvalue solves run only when an eigenvalue is missing, the trace only when the
        trace is (adding --trace to a finished file costs the trace alone)."""
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
            values[hdf5_layout.TRACE] = operator.trace(solver.trace_samples, rng)
        return values
    return lambda points: [evaluate_point(k, names) for k, names in points]
