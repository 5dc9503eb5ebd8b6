"""The Hessian's spectrum from Hessian-vector products alone: top eigenpairs, trace, spectral density.

Everything here works on ``matvec(v) -> H v`` for flat float64 numpy vectors of size ``n``
(hessian.MeanLossHessian.hvp), so it never forms the Hessian:

  top_eigenpairs   the k largest eigenvalues and their unit eigenvectors (ARPACK's implicitly
                   restarted Lanczos, scipy eigsh), with each pair's residual ||H v - lambda v||
  hutch_plus_plus  the trace by Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of H on a
                   sketched top subspace, exactly, plus Hutchinson's estimate on the rest, so the
                   error falls as 1/m in the number of products m instead of 1/sqrt(m) -- with a
                   standard error from the Hutchinson part's samples
  slq_density      the spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao
                   2019; Ubaru, Chen, Saad 2017): Lanczos with full reorthogonalization from several
                   random starts, each giving Ritz values (nodes) and the squared first components
                   of their eigenvectors (weights, summing to 1); the density is the average of the
                   Gaussian-smoothed node sets (smoothed_density)
"""
import math

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

DEFAULT_TOP_K = 5
DEFAULT_EIG_TOL = 1e-6
DEFAULT_TRACE_HVPS = 150         # Hutch++: a third sketches, a third on the sketch, a third on the rest
DEFAULT_DENSITY_STARTS = 5
DEFAULT_DENSITY_STEPS = 60
DEFAULT_DENSITY_SIGMA = 0.01      # Gaussian width, as a fraction of the spectrum's range
DENSITY_GRID_POINTS = 1000
DENSITY_MARGIN_SIGMAS = 6         # the grid extends this many widths beyond the extreme nodes


def rademacher(rng, n, count):
    return rng.integers(0, 2, size=(n, count)).astype(np.float64) * 2.0 - 1.0


def apply(matvec, block):
    """H @ block, one column at a time."""
    return np.column_stack([matvec(np.ascontiguousarray(block[:, j])) for j in range(block.shape[1])])


def top_eigenpairs(matvec, n, k=DEFAULT_TOP_K, tol=DEFAULT_EIG_TOL, rng=None, maxiter=None):
    """(eigenvalues in descending order, eigenvectors as columns, residuals ||H v - lambda v||) of
    the ``k`` largest (algebraic) eigenvalues. Small problems (n <= k + 1, where ARPACK cannot
    work) are solved densely from n products."""
    rng = rng or np.random.default_rng(0)
    if n <= k + 1:
        dense = apply(matvec, np.eye(n))
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    else:
        operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        values, vectors = eigsh(operator, k=k, which='LA', tol=tol, v0=rng.standard_normal(n),
                                ncv=min(n, max(2 * k + 1, 20)), maxiter=maxiter)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
    residuals = np.array([np.linalg.norm(matvec(vectors[:, j]) - values[j] * vectors[:, j])
                          for j in range(vectors.shape[1])])
    return values, vectors, residuals


def hutch_plus_plus(matvec, n, num_hvps=DEFAULT_TRACE_HVPS, rng=None):
    """(trace estimate, its standard error) from ``num_hvps`` products (rounded down to a multiple
    of 3). When a third of them spans the whole space the trace is exact (standard error 0)."""
    rng = rng or np.random.default_rng(0)
    third = max(1, num_hvps // 3)
    if third >= n:
        # The sketch would span everything: n products give the exact trace.
        return float(sum(matvec(e)[i] for i, e in enumerate(np.eye(n)))), 0.0
    sketch, _ = np.linalg.qr(apply(matvec, rademacher(rng, n, third)))
    exact_part = float(np.trace(sketch.T @ apply(matvec, sketch)))
    probes = rademacher(rng, n, third)
    probes -= sketch @ (sketch.T @ probes)                 # (I - Q Q^T) G
    samples = np.einsum('ij,ij->j', probes, apply(matvec, probes))
    rest = float(samples.mean())
    stderr = float(samples.std(ddof=1) / math.sqrt(third)) if third > 1 else math.inf
    return exact_part + rest, stderr


def lanczos(matvec, start, steps):
    """(alphas, betas) of ``steps`` Lanczos iterations from ``start`` with full
    reorthogonalization (every new vector made orthogonal to all earlier ones, twice, so the Ritz
    values carry no spurious copies). Stops early at an invariant subspace."""
    n = start.size
    steps = min(steps, n)
    basis = np.zeros((steps, n))
    basis[0] = start / np.linalg.norm(start)
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j])
        alpha = float(basis[j] @ w)
        alphas.append(alpha)
        for _ in range(2):
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        if j == steps - 1:
            break
        beta = float(np.linalg.norm(w))
        if beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    return np.array(alphas), np.array(betas)


def quadrature(alphas, betas):
    """(nodes, weights) of the Gauss quadrature of a Lanczos run: the eigenvalues of its
    tridiagonal matrix and the squared first components of their eigenvectors."""
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    nodes, vectors = np.linalg.eigh(tridiagonal)
    return nodes, vectors[0] ** 2


def slq_density(matvec, n, starts=DEFAULT_DENSITY_STARTS, steps=DEFAULT_DENSITY_STEPS, rng=None, deflate=None):
    """[(nodes, weights)] of ``starts`` Lanczos runs from random Gaussian vectors.

    ``deflate=(values, vectors)``: known top eigenpairs (top_eigenpairs). They enter every run as
    exact nodes of weight 1/n each, and the Lanczos runs explore only the rest of the space (H
    projected off those vectors, from starts projected likewise), weighted (n - k)/n. The few
    large outliers of a network's Hessian then no longer dominate the variance of the random
    starts: with them deflated, the density's mean (trace / n) is far more accurate for the same
    products."""
    rng = rng or np.random.default_rng(0)
    values, vectors = deflate if deflate is not None else (np.empty(0), np.empty((n, 0)))
    k = len(values)
    if k >= n:
        return [(np.asarray(values, dtype=np.float64), np.full(k, 1.0 / k))]

    def off(v):
        return v - vectors @ (vectors.T @ v) if k else v
    runs = []
    for _ in range(starts):
        nodes, weights = quadrature(*lanczos(lambda v: off(matvec(off(v))), off(rng.standard_normal(n)), steps))
        if len(nodes) == n - k:
            # The run spanned the whole (remaining) space: its nodes are all the eigenvalues, each
            # of multiplicity one, so the exact weights are equal -- the random start's are not.
            weights = np.full(len(nodes), 1.0 / len(nodes))
        runs.append((np.concatenate([values, nodes]), np.concatenate([np.full(k, 1.0 / n), weights * (n - k) / n])))
    return runs


def smoothed_density(runs, sigma_fraction=DEFAULT_DENSITY_SIGMA, points=DENSITY_GRID_POINTS):
    """(grid, density): the average over ``runs`` of sum_i w_i N(x; node_i, sigma^2), sigma a
    fraction of the nodes' range, on a grid reaching DENSITY_MARGIN_SIGMAS widths beyond them.
    Its integral is 1 (each run's weights sum to 1) and its mean estimates trace / n."""
    all_nodes = np.concatenate([nodes for nodes, _ in runs])
    low, high = float(all_nodes.min()), float(all_nodes.max())
    sigma = sigma_fraction * max(high - low, abs(high), 1e-12)
    grid = np.linspace(low - DENSITY_MARGIN_SIGMAS * sigma, high + DENSITY_MARGIN_SIGMAS * sigma, points)
    density = np.zeros_like(grid)
    for nodes, weights in runs:
        gauss = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += gauss @ weights
    return grid, density / len(runs)
