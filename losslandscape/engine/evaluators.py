"""What computes a grid point's values: the objective's values (one point at a time, or several
stacked points in one batched pass) and the Hessian's extreme eigenvalues and trace.

Each ``make_*`` takes a run_setup.Run and returns ``evaluate_points([(k, names), ...]) ->
[{name: float}, ...]`` for surface_engine.run_grid, computing at least ``names`` (the values
point k misses) and never more than it must (a file that has train_loss and now gets test_loss
does not pay for train_loss again).
"""
import sys
import time

import numpy as np

from losslandscape.compute import point_batching
from losslandscape.curvature import hessian
from losslandscape.io import hdf5_layout
from losslandscape.objectives import objective
from losslandscape.parallel import scheduler


def make_loss_evaluator(run):
    """The objective's values (train_loss, train_acc, ...) at grid points, each with its standard
    error, and the loss's paired rise above the centre: moving the model point by point, or with
    --points_per_call > 1 all of a call's points in one batched pass.

    The rise pairs each point's per-sample losses with the centre's (x = y = 0), which each rank
    evaluates once per data set, when its first point needs them (the grid's centre point itself
    serves, when it comes first); a resumed run with no point missing evaluates nothing."""
    settings = run.settings
    centres = {}   # prefix -> standard_errors.Centre

    def needed_datasets(names):
        # A data set is evaluated when any of its values is missing (they all come from one pass).
        return [(prefix, data) for prefix, data in run.datasets()
                if any(name.startswith(prefix + '_') for name in names)]

    def prefixed(prefix, values):
        return {f'{prefix}_{key}': value for key, value in values.items()}

    def evaluate_point(k, names):
        needed = needed_datasets(names)
        x, y = run.grid.point(k)
        values = {}
        if x == 0 and not y and any(prefix not in centres for prefix, _ in needed):
            # The centre itself: its own pass is the reference, its rise 0.
            run.move_to(k)
            for prefix, data in needed:
                point, centres[prefix] = objective.evaluate_centre(run.eval_net, data, run.objective, settings.amp)
                values.update(prefixed(prefix, {**point, objective.LOSS_RISE: 0.0,
                                                hdf5_layout.stderr_name(objective.LOSS_RISE): 0.0}))
            return values
        unpaired = [(prefix, data) for prefix, data in needed if prefix not in centres]
        if unpaired:
            run.move_to_centre()
            for prefix, data in unpaired:
                centres[prefix] = objective.evaluate_centre(run.eval_net, data, run.objective, settings.amp)[1]
        run.move_to(k)
        for prefix, data in needed:
            values.update(prefixed(prefix, objective.evaluate(run.eval_net, data, run.objective, settings.amp,
                                                              centres[prefix])))
        return values

    if settings.points_per_call == 1:
        return lambda points: [evaluate_point(k, names) for k, names in points]
    stack = point_batching.StackedPoints(run.net, settings.dir_type, run.base, run.directions.full('x', run.base),
                                         run.directions.full('y', run.base))

    def evaluate_points(points):
        coords = [run.grid.point(k) for k, _ in points]
        tensors = stack.stacked([(x, 0.0 if y is None else y) for x, y in coords])
        values = [{} for _ in points]
        for prefix, data in needed_datasets([n for _, names in points for n in names]):
            if prefix not in centres:
                centres[prefix] = point_batching.evaluate_stacked(run.net, stack.stacked([(0.0, 0.0)]), data,
                                                                  run.objective, settings.amp, None, True)[0][1]
            results = point_batching.evaluate_stacked(run.net, tensors, data, run.objective, settings.amp,
                                                      centres[prefix])
            for point, result in zip(values, results):
                point.update(prefixed(prefix, result))
        return values
    return evaluate_points


EIGEN_NAMES = (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)
# Recorded with the eigenvalues, but never a reason to solve again: files of the original code lack them.
EIGEN_BY_PRODUCTS = (hdf5_layout.HVP_COUNT, hdf5_layout.EIG_SOLVE)
PROGRESS_SECONDS = 2.0    # the longest a slow point goes without its products on the progress line


def eigen_value_names(trace):
    names = [*EIGEN_NAMES, *EIGEN_BY_PRODUCTS]
    return names + [hdf5_layout.TRACE] if trace else names


class ProductProgress:
    """The products a point has taken so far, on the grid's progress bar (rank 0): a point of a
    large model takes minutes, and the bar moves only when it is done. Shown after a product
    once PROGRESS_SECONDS have passed since the point began or the line last changed, so fast
    products cost no redrawing."""

    def __init__(self, clock=time.monotonic):
        self.bar, self.clock = None, clock
        self.first = self.shown_at = None
        self.showing = False

    def attach(self, bar):
        self.bar = bar

    def start_point(self, count):
        """A point begins, the product counter at ``count``."""
        self.first, self.shown_at = count, self.clock()

    def products_done(self, count):
        """hessian.MeanLossHessian.on_products: the counter now stands at ``count``."""
        if self.bar is None or self.first is None:
            return
        now = self.clock()
        if now - self.shown_at >= PROGRESS_SECONDS:
            self.bar.set_postfix_str(f'{count - self.first} Hessian-vector products into this point', refresh=True)
            self.shown_at, self.showing = now, True

    def end_point(self):
        self.first = None
        if self.showing:
            self.bar.set_postfix_str('', refresh=False)    # the bar's own update redraws it
            self.showing = False


class HessianEvaluator:
    """The extreme eigenvalues (and with ``solver.trace_samples``, the trace) of the Hessian of
    the run's mean objective at grid points. ``solver``: a hessian.SolverSettings.

    One tracker per rank, fed the rank's points in the order run_grid(chains=True) hands them
    (serpentine, consecutive points neighbours): with --eig_solver warm each point starts from the
    eigenvectors of the point before, and a point that is not a neighbour of the rank's last
    solved point (the first one, or one after a gap that an earlier run filled) starts a new
    chain, solved cold. Call it with [(k, names), ...]; ``attach_bar`` is run_grid's on_bar."""

    def __init__(self, run, solver):
        self.run, self.solver = run, solver
        params = hessian.hessian_parameters(run.net, run.settings.directions.include_params,
                                            run.settings.directions.exclude_params)
        self.operator = hessian.MeanLossHessian(run.eval_net, run.train_data, run.objective, params=params,
                                                share=run.comm.local_size)
        self.tracker = hessian.EigenTracker(solver.tol, solver.maxiter, solver.ncv, solver=solver.solver)
        self.progress = ProductProgress()
        self.operator.on_products = self.progress.products_done
        self.last_solved = None

    def attach_bar(self, bar):
        self.progress.attach(bar)

    def __call__(self, points):
        return [self.evaluate_point(k, names) for k, names in points]

    def evaluate_point(self, k, names):
        """The eigenvalue solves run only when an eigenvalue is missing, the trace only when the
        trace is (adding --trace to a finished file costs the trace alone)."""
        x, y = self.run.move_to(k)
        values = {}
        self.progress.start_point(self.operator.hvp_count)
        try:
            if set(EIGEN_NAMES) & set(names):
                values = self.solve(k, x, y)
            if hdf5_layout.TRACE in names:
                rng = np.random.default_rng((hessian.TRACE_SEED, int(k)))
                values[hdf5_layout.TRACE] = self.operator.trace(self.solver.trace_samples, rng)
        finally:
            self.progress.end_point()
        return values

    def solve(self, k, x, y):
        if self.last_solved is None or not scheduler.are_neighbours(self.last_solved, k, self.run.grid.shape):
            self.tracker.reset()
        result = self.tracker.solve(self.operator)
        self.last_solved = k
        if result.failure:
            where = f'x={x:g}' + ('' if y is None else f', y={y:g}')
            print(f'warning: point {k} ({where}): {result.failure}; stored NaN', file=sys.stderr, flush=True)
        # hvp_count: the products of the eigenvalue solves, a failed warm one's included (not the trace samples).
        return {hdf5_layout.MAX_EIG: result.max_eig, hdf5_layout.MIN_EIG: result.min_eig,
                hdf5_layout.HVP_COUNT: float(result.hvp_count),
                hdf5_layout.EIG_SOLVE: float(hdf5_layout.EIG_SOLVE_PATHS.index(result.path))}


def make_hessian_evaluator(run, solver):
    """A HessianEvaluator: evaluate_points for run_grid, with attach_bar for its on_bar."""
    return HessianEvaluator(run, solver)
