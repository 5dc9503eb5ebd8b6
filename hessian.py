"""Hessian of the mean training objective at one point of weight space: products, extreme eigenvalues, trace.

The Hessian is that of the objective's mean exactly as it is stored (objective.py): the sum of the
per-batch loss sums divided by the data set's total count (samples, or counted tokens), with
respect to the parameters with dim > 1 (conv and linear weights, as the original code; restricted
further by --include_params/--exclude_params), the model in eval mode (BatchNorm uses its running
statistics, so the loss is a fixed function of the weights). A Hessian-vector product (HVP) is one
double back-propagation pass over the whole data set; the batch size changes only speed and
memory, never the result. (The 2018 code summed the per-batch HVPs of per-batch mean losses, which
multiplied every eigenvalue by the number of batches.)

The largest and smallest eigenvalues come from ARPACK's Lanczos method (scipy eigsh) on a
LinearOperator; ``EigenTracker`` warm-starts each point from the previous point's eigenvectors.
The ratio |min_eig / max_eig| measures the local non-convexity (Li et al. 2018, section 7).
"""
import dataclasses
import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

import dataloader
import objective as objectives
from errors import UsageError
from net_plotter import selected_entries

DEFAULT_EIG_TOL = 1e-2      # the original's tolerance: ARPACK's residual test ||Hv - theta v|| <= tol |theta|
DEFAULT_EIG_MAXITER = 100   # ARPACK restarts per solve (each costs about ncv HVPs)
DEFAULT_EIG_NCV = 20        # Lanczos basis size: scipy's own default for one eigenvalue
DEFAULT_TRACE_SAMPLES = 16
START_SEED = 0              # the first point's random Lanczos start vector
TRACE_SEED = 0              # Hutchinson vectors at point k: default_rng((TRACE_SEED, k))
SHIFT_MARGIN = 0.1          # see extreme_eigenvalues
DENSE_BELOW = 8             # fewer parameters than this: form the Hessian densely instead of ARPACK
BLOCK_CHUNK = 8             # vectors per batched pass of hvp_block (activation memory grows with it)


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How plot_hessian_eigen.py solves each point (its --eig_* / --warm_start / --trace flags)."""
    tol: float = DEFAULT_EIG_TOL
    maxiter: int = DEFAULT_EIG_MAXITER
    ncv: int = DEFAULT_EIG_NCV
    warm_start: bool = False
    trace_samples: int = 0       # 0: no trace


class NonFiniteProduct(ArithmeticError):
    """A Hessian-vector product held inf or NaN: the model diverged at this point."""


def hessian_parameters(net, include='', exclude=''):
    """The parameters the Hessian is taken over: those with dim > 1, in net.parameters() order,
    among those --include_params / --exclude_params keep."""
    named = list(net.named_parameters())
    keep = selected_entries([n for n, _ in named], include, exclude) if (include or exclude) else [True] * len(named)
    params = [p for (_, p), kept in zip(named, keep) if kept and p.dim() > 1]
    if not params:
        raise UsageError('the Hessian is taken over parameters with dim > 1, and none is '
                         + ('selected by --include_params/--exclude_params' if include or exclude else 'in the model'))
    return params


class MeanLossHessian:
    """H = d^2 (mean objective over ``data``) / dw^2 for the parameters ``params`` (default:
    hessian_parameters(net)).

    ``data``: a dataloader batch source, or a CachedDataset (evaluated in batches of
    ``batch_size``); ``loss``: an objective.Objective or a --loss_name. Products take and return
    flat float64 numpy vectors (what ARPACK works in); the model computes in its own dtype.
    ``hvp_count`` counts every product; a product holding inf or NaN raises NonFiniteProduct. The
    parameters are read when a product is taken, so moving the model in place (Run.move_to) moves
    the Hessian with it."""

    def __init__(self, net, data, loss='crossentropy', batch_size=128, params=None):
        if isinstance(data, dataloader.CachedDataset):
            data = dataloader.CachedBatches(data, batch_size, data.device)
        self.net, self.data = net, data
        self.objective = objectives.resolve(loss) if not isinstance(loss, objectives.Objective) else loss
        self.params = hessian_parameters(net) if params is None else list(params)
        self.size = sum(p.numel() for p in self.params)
        self.hvp_count = 0
        self._count = None
        self._functional_ok = True

    @property
    def count(self):
        """What the mean divides by: the number of samples for the built-in losses, else the
        objective's total count (one pass, once: counts never depend on the weights)."""
        if self._count is None:
            self._count = self.data.num_samples if isinstance(self.objective, objectives.ClassificationObjective) \
                else objectives.total_count(self.objective, self.net, self.data)
        return self._count

    def _split(self, vector):
        """A flat numpy vector as tensors shaped like the parameters, on their device and dtype."""
        flat = torch.as_tensor(np.ascontiguousarray(vector).reshape(-1))
        pieces, start = [], 0
        for p in self.params:
            pieces.append(flat[start:start + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype))
            start += p.numel()
        return pieces

    def hvp(self, vector):
        """H @ vector, accumulated over all batches of the data (one pass)."""
        self.net.eval()
        vs = self._split(vector)
        n = self.count
        total = torch.zeros(self.size, dtype=torch.float64, device=self.params[0].device)
        with torch.enable_grad():
            for batch in self.data.batches():
                # This batch's share of the mean loss: summed over its samples, divided by the total.
                loss = self.objective.loss_sum(self.net, batch) / n
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                grad_dot_v = sum((g * v).sum() for g, v in zip(grads, vs))
                products = torch.autograd.grad(grad_dot_v, self.params)
                total += torch.cat([h.reshape(-1) for h in products]).double()
        self.hvp_count += 1
        if not torch.isfinite(total).all():
            raise NonFiniteProduct('the Hessian-vector product holds inf or NaN')
        return total.cpu().numpy()

    def hvp_block(self, vectors, chunk=BLOCK_CHUNK):
        """H @ each row of ``vectors`` ((m, n) float64 numpy), ``chunk`` rows per pass over the data.

        Forward-over-reverse products (torch.func: jvp of grad) batched with vmap, so a pass
        shares the data and the model's kernels among the vectors: several times the products
        per second of ``hvp`` on the suite's CNNs (benchmarks/RESULTS.md). A model or objective
        torch.func cannot transform (in-place tricks, .item() on a tensor) falls back to ``hvp``,
        one vector at a time, for the rest of the run; the values agree to float32 rounding."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if self._functional_ok:
            try:
                out = np.concatenate([self._functional_block(vectors[i:i + chunk])
                                      for i in range(0, len(vectors), chunk)])
                self.hvp_count += len(vectors)
                if not np.isfinite(out).all():
                    raise NonFiniteProduct('the Hessian-vector product holds inf or NaN')
                return out
            except (RuntimeError, TypeError, ValueError, UsageError):
                self._functional_ok = False
        return np.stack([self.hvp(v) for v in vectors])

    def _functional_block(self, vectors):
        import warnings
        with warnings.catch_warnings():
            # torch.func's first import warns about torch.jit internals it uses; nothing to act on.
            warnings.simplefilter('ignore', FutureWarning)
            from torch.func import functional_call, grad, jvp, vmap
        names = {id(p): n for n, p in self.net.named_parameters()}
        chosen = [names[id(p)] for p in self.params]
        others = {n: p.detach() for n, p in self.net.named_parameters() if n not in set(chosen)}
        buffers = dict(self.net.named_buffers())
        point = {n: p.detach() for n, p in zip(chosen, self.params)}
        n_total = self.count
        block = torch.as_tensor(vectors, device=self.params[0].device)
        pieces = {}
        start = 0
        for name, p in zip(chosen, self.params):
            pieces[name] = block[:, start:start + p.numel()].reshape(len(vectors), *p.shape).to(p.dtype)
            start += p.numel()
        self.net.eval()
        total = torch.zeros(block.shape, dtype=torch.float64, device=block.device)
        for batch in self.data.batches():
            def batch_loss(weights):
                def model(*args, **kwargs):
                    return functional_call(self.net, ({**others, **weights}, buffers), args, kwargs)
                return self.objective.loss_sum(model, batch) / n_total
            gradient = grad(batch_loss)

            def product(tangent):
                out = jvp(gradient, (point,), (tangent,))[1]
                return torch.cat([out[name].reshape(-1) for name in chosen])
            total += vmap(product)(pieces).double()
        return total.cpu().numpy()

    def operator(self, scale=1.0, shift=0.0):
        """The LinearOperator v -> scale * H v + shift * v."""
        def matvec(v):
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            out = self.hvp(v)
            if scale != 1.0:
                out *= scale
            if shift:
                out += shift * v
            return out
        return LinearOperator((self.size, self.size), matvec=matvec, dtype=np.float64)

    def trace(self, samples, rng):
        """Hutchinson's estimate of tr(H): the mean of z^T H z over ``samples`` Rademacher vectors
        z drawn from ``rng`` (unbiased; variance 2 (||H||_F^2 - sum_i H_ii^2) / samples). NaN
        where the products are not finite."""
        estimates = []
        for _ in range(samples):
            z = rng.integers(0, 2, size=self.size).astype(np.float64) * 2.0 - 1.0
            try:
                estimates.append(float(z @ self.hvp(z)))
            except NonFiniteProduct:
                return math.nan
        return float(np.mean(estimates))


@dataclasses.dataclass
class ExtremeEigen:
    """The largest and smallest eigenvalues at one point, their eigenvectors and the HVPs the
    solves took. A solve that fails gives NaN and None, and ``failure`` says why."""
    max_eig: float
    min_eig: float
    max_vec: np.ndarray
    min_vec: np.ndarray
    hvp_count: int
    failure: str = ''


def top_eigenpair(operator, v0, tol, maxiter, ncv):
    """(eigenvalue, unit eigenvector, '') of the largest algebraic eigenvalue of a symmetric
    operator, or (nan, None, why) when ARPACK fails."""
    n = operator.shape[0]
    if n < DENSE_BELOW:
        # ARPACK wants n > ncv > 1 and a few dimensions to work in; this is cheaper outright.
        try:
            values, vectors = np.linalg.eigh(np.column_stack([operator.matvec(e) for e in np.eye(n)]))
        except NonFiniteProduct as err:
            return math.nan, None, str(err)
        return float(values[-1]), vectors[:, -1], ''
    try:
        values, vectors = eigsh(operator, k=1, which='LA', v0=v0, tol=tol, maxiter=maxiter,
                                ncv=min(ncv, n))
    except ArpackNoConvergence:
        return math.nan, None, f'ARPACK did not converge within {maxiter} restarts'
    except NonFiniteProduct as err:
        return math.nan, None, str(err)
    except ArpackError as err:
        return math.nan, None, f'ARPACK failed ({err})'
    return float(values[0]), vectors[:, 0], ''


def extreme_eigenvalues(hessian, tol=DEFAULT_EIG_TOL, maxiter=DEFAULT_EIG_MAXITER, ncv=DEFAULT_EIG_NCV,
                        v0_max=None, v0_min=None):
    """Largest and smallest eigenvalue of ``hessian`` (a MeanLossHessian), two Lanczos solves.

    1. lambda_max: the top ('LA') eigenvalue of H itself.
    2. lambda_min = sigma - mu, with mu the top eigenvalue of  A = sigma I - H  and
       sigma = lambda_max + SHIFT_MARGIN |lambda_max|.  A's spectrum is
       [SHIFT_MARGIN |lambda_max|, sigma - lambda_min]: away from zero, and its top end is
       lambda_min whatever the signs -- positive definite, indefinite and negative definite
       Hessians alike. Lanczos is shift-invariant (same Krylov space, same Ritz vectors), so the
       shift changes only ARPACK's stopping test, which is relative to the Ritz value itself:
       'SA' on H directly would demand an accuracy relative to |lambda_min|, unreachable with
       float32 products when lambda_min ~ 0 -- the nearly convex case the ratio |min/max| is
       meant to show. After the shift lambda_min is accurate to about tol * mu, so
       |min/max| to about tol * (1 + SHIFT_MARGIN + |min/max|); the margin keeps A away from 0
       should H be a multiple of the identity.
       (The original used 'LM' and a shift of 0.51 lambda_max, which returns the wrong end when
       |lambda_min| > lambda_max, or when H is positive definite with lambda_min > 0.02 lambda_max.)
    ``v0_max`` / ``v0_min``: start vectors (warm start); random (seeded) when None."""
    count_before = hessian.hvp_count
    v0_max = _start_vector(hessian.size, v0_max)
    max_eig, max_vec, failure = top_eigenpair(hessian.operator(), v0_max, tol, maxiter, ncv)
    if failure:
        return ExtremeEigen(math.nan, math.nan, None, None, hessian.hvp_count - count_before, failure)
    sigma = max_eig + SHIFT_MARGIN * abs(max_eig)
    # Start the second solve away from max_vec: that is A's *lowest* eigenvector.
    v0_min = _start_vector(hessian.size, v0_min, avoid=max_vec)
    mu, min_vec, failure = top_eigenpair(hessian.operator(scale=-1.0, shift=sigma), v0_min, tol, maxiter, ncv)
    return ExtremeEigen(max_eig, sigma - mu, max_vec, min_vec, hessian.hvp_count - count_before, failure)


def _start_vector(n, v0, avoid=None):
    """``v0``, or a seeded random vector; with ``avoid`` (a unit vector) its component along
    ``avoid`` is removed, unless that leaves (almost) nothing."""
    if v0 is None:
        v0 = np.random.default_rng(START_SEED).standard_normal(n)
    v0 = np.array(v0, dtype=np.float64).reshape(-1)
    if avoid is not None:
        projected = v0 - (avoid @ v0) * avoid
        if np.linalg.norm(projected) > 1e-3 * np.linalg.norm(v0):
            v0 = projected
    return v0


class EigenTracker:
    """Extreme eigenvalues point after point, each solve starting from the eigenvectors of the
    previous point (neighbouring grid points have nearby Hessians, so Lanczos starts close to the
    answer and converges in fewer products)."""

    def __init__(self, tol=DEFAULT_EIG_TOL, maxiter=DEFAULT_EIG_MAXITER, ncv=DEFAULT_EIG_NCV, warm_start=True):
        self.tol, self.maxiter, self.ncv = tol, maxiter, ncv
        self.max_vec = self.min_vec = None
        # Without warm starts every point starts from the same seeded vector, so a point's result
        # does not depend on which points this rank solved before it: resumed and MPI runs then
        # give bit for bit the values of an uninterrupted serial run with the same --threads
        # (a different thread count may sum the products in another order).
        self.warm_start = warm_start

    def solve(self, hessian):
        result = extreme_eigenvalues(hessian, self.tol, self.maxiter, self.ncv, self.max_vec, self.min_vec)
        # A failed solve keeps the last good start vectors.
        if not self.warm_start:
            return result
        if result.max_vec is not None:
            self.max_vec = result.max_vec
        if result.min_vec is not None:
            self.min_vec = result.min_vec
        return result
