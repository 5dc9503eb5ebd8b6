"""Standard errors of a point's means, and the paired rise above the centre.

Every stored value is a mean over the evaluated samples (or tokens) -- a ratio sum(y_i) / sum(n_i)
over *units* i: samples (n_i = 1), sequences of a language model (y_i the sequence's summed token
loss, n_i its counted tokens), or, for an objective that gives nothing finer, whole batches (y_i the
batch's sum, n_i its count). Its standard error is the delta-method (ratio-estimator) one,

    R = sum(y) / sum(n),  se(R)^2 = sum((y_i - R n_i)^2) / ((m - 1) m nbar^2),  nbar = sum(n) / m,

over the m units, which for n_i = 1 is the familiar s / sqrt(m) (s the sample standard deviation).
It is computed from five running sums -- sum(y), sum(y^2), sum(y n), sum(n), sum(n^2) -- that the
evaluation accumulates on the device beside the objective's own sums: no extra host sync.

What it estimates: the spread of the mean of m units drawn independently from the distribution the
data came from, i.e. how far the value may lie from that distribution's mean. A --samples subset
drawn without replacement from a data set of N_total units is such a draw too, so the same formula
holds for it; against the full data set's own value its error is smaller, by the finite-population
factor sqrt(1 - m / N_total) (applied nowhere: the stored error is the conservative one). It says
nothing of a bias the data share: a fixed subset gives every point the same samples, so its error is
common to all points of a surface, and the rise between points is far more precise than each value.

The rise: with the centre's per-unit values kept (``Pass(keep_units=True)``), a point's pass also sums
the paired differences d_i = y_i(point) - y_i(centre) (the data order is fixed, so unit i is the same
sample at every point), giving rise = sum(d) / sum(n) and its standard error by the same formula.

Estimation methods, recorded per value (hdf5_layout.STDERR_METHODS_ATTR):
"""
import dataclasses
import math

import numpy as np
import torch

PER_SAMPLE, PER_SEQUENCE, PER_BATCH = 'per-sample', 'per-sequence', 'per-batch'
METHODS = {PER_SAMPLE: 'from the per-sample values (or, for a custom objective, its <key>_sq sums of squares)',
           PER_SEQUENCE: 'from the per-sequence token-loss sums, weighted by their token counts (ratio estimator)',
           PER_BATCH: 'from the spread of the batch means, weighted by the batch counts (a coarse estimate: '
                      'the objective gives no per-sample values)'}
__doc__ += ''.join(f'    {name:<13}{text}\n' for name, text in METHODS.items())

SUM_NAMES = ('y', 'yy', 'yn', 'n', 'nn')   # the five running sums of one ratio


def ratio_stderr(sum_y, sum_yy, sum_yn, sum_n, sum_nn, units):
    """The standard error of sum(y) / sum(n) over ``units`` units from their running sums (see the
    module docstring); NaN with fewer than 2 units or no count."""
    if units < 2 or not sum_n > 0:
        return math.nan
    ratio = sum_y / sum_n
    # sum((y_i - R n_i)^2), expanded; rounding may leave a tiny negative where every y_i = R n_i.
    squares = max(sum_yy - 2 * ratio * sum_yn + ratio * ratio * sum_nn, 0.0)
    if not math.isfinite(squares):
        return math.nan if math.isnan(squares) else math.inf
    mean_count = sum_n / units
    return math.sqrt(squares / ((units - 1) * units)) / mean_count


def unit_stderr(sum_values, sum_squares, count):
    """The standard error of the mean of ``count`` values of weight 1 each, given their sum and the
    sum of their squares (a per-sample value; for 0/1 values such as correct predictions the sum
    of squares is the sum)."""
    return ratio_stderr(sum_values, sum_squares, sum_values, count, count, count)


def batch_stderr(batch_values, batch_counts):
    """The batch-level estimate: the batches as units, each weighing its count (arrays)."""
    y, n = np.asarray(batch_values, dtype=np.float64), np.asarray(batch_counts, dtype=np.float64)
    return ratio_stderr(y.sum(), (y * y).sum(), (y * n).sum(), n.sum(), (n * n).sum(), len(y))


def _ratio_sums(y, n):
    """The five running sums of one batch of units, as float64 0-d tensors on their device
    (``n`` None: each unit counts 1)."""
    total = y.sum()
    if n is None:
        count = float(y.shape[0])
        return total, (y * y).sum(), total, count, count
    return total, (y * y).sum(), (y * n).sum(), n.sum(), (n * n).sum()


@dataclasses.dataclass
class Centre:
    """The centre's per-unit loss sums (one float64 device tensor, in evaluation order) and each
    batch's loss sum (numpy), which a point's pass pairs its own with."""
    unit_losses: torch.Tensor    # None where the objective gives no units
    batch_losses: np.ndarray


@dataclasses.dataclass
class PassResult:
    """One pass's sums for the standard errors, as floats: ``batches`` {sum key: per-batch array},
    ``units`` the loss's five sums over its units and ``unit_count`` (m), ``rise`` the paired
    differences' five sums (None without a centre), ``centre`` what a later pass pairs with (when kept)."""
    batches: dict
    units: dict = None
    unit_count: int = 0
    rise: dict = None
    centre: Centre = None


class Pass:
    """What one pass over a data set accumulates besides the objective's totals: every batch's sums,
    and, where the objective gives per-unit losses, the running sums of those units (and of their
    differences from ``centre``'s); ``keep_units``: keep this pass's units, to be a Centre."""

    def __init__(self, loss_key, centre=None, keep_units=False):
        self.loss_key, self.centre, self.keep_units = loss_key, centre, keep_units
        self.batches = {}
        self.units = self.rise = None
        self.unit_count = 0
        self.kept = []

    def add(self, sums, units):
        """One batch: its sums {key: number or 0-d tensor} and its units ((losses, counts or None), or None)."""
        for key, value in sums.items():
            self.batches.setdefault(key, []).append(value.double() if torch.is_tensor(value) else float(value))
        if units is None:
            return
        y, n = units
        self.units = _added(self.units, _ratio_sums(y, n))
        if self.centre is not None and self.centre.unit_losses is not None:
            paired = self.centre.unit_losses[self.unit_count:self.unit_count + y.shape[0]]
            self.rise = _added(self.rise, _ratio_sums(y - paired, n))
        self.unit_count += y.shape[0]
        if self.keep_units:
            self.kept.append(y)

    def result(self):
        """The PassResult, read from the device in one transfer."""
        tensors = [v for values in self.batches.values() for v in values if torch.is_tensor(v)]
        tensors += [v for sums in (self.units, self.rise) if sums for v in sums if torch.is_tensor(v)]
        read = iter(torch.stack([t.reshape(()).to(tensors[0].device) for t in tensors]).cpu().tolist()) \
            if tensors else iter(())

        def value(v):
            return next(read) if torch.is_tensor(v) else v
        batches = {key: np.array([value(v) for v in values]) for key, values in self.batches.items()}
        units, rise = ({name: value(v) for name, v in zip(SUM_NAMES, sums)} if sums else None
                       for sums in (self.units, self.rise))
        centre = None
        if self.keep_units:
            centre = Centre(torch.cat(self.kept) if self.kept else None, batches[self.loss_key])
        return PassResult(batches, units, self.unit_count, rise, centre)


def _added(running, sums):
    return sums if running is None else tuple(a + b for a, b in zip(running, sums))


def rise_and_stderr(result, centre, loss_key, count_key):
    """(the rise above ``centre`` and its standard error) of one pass: from the paired units where
    the objective gives units, else from the paired batches (every batch holds the same samples at
    every point, so a batch's difference is paired too)."""
    if result.rise is not None:
        sums = result.rise
        rise = sums['y'] / sums['n'] if sums['n'] else math.nan
        return rise, ratio_stderr(*(sums[k] for k in SUM_NAMES), result.unit_count)
    counts = result.batches[count_key]
    differences = result.batches[loss_key] - centre.batch_losses
    return (differences.sum() / counts.sum() if counts.sum() else math.nan), batch_stderr(differences, counts)


def units_stderr(result):
    """The loss's standard error from its units' running sums."""
    return ratio_stderr(*(result.units[k] for k in SUM_NAMES), result.unit_count)
