"""The Hessian's spectrum from Hessian-vector products alone: top eigenpairs, trace, spectral density.

Everything here works on ``matvec(v) -> H v`` for flat float64 numpy vectors of size ``n``
(hessian.MeanLossHessian.hvp), so it never forms the Hessian:

  Lanczos          Lanczos with full reorthogonalization, one product per step, its basis kept
                   so that later estimates reuse the products already made
  top_eigenpairs   the k largest eigenvalues and their unit eigenvectors (Lanczos, stopped when
                   every pair's residual ||H v - lambda v|| is below tol), with the residuals
  krylov_trace     the trace: exact on the top-k solve's Krylov space (extended a little), plus
                   Hutchinson's estimate on the rest, with its standard error -- what
                   hessian_spectrum.py uses
  hutch_plus_plus  the trace by Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of H on a
                   sketched top subspace, exactly, plus Hutchinson's estimate on the rest, so the
                   error falls as 1/m in the number of products m instead of 1/sqrt(m) -- with a
                   standard error from the Hutchinson part's samples; the top eigenpairs already
                   computed are deflated first (their eigenvalues counted exactly)
  slq_density      the spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao
                   2019; Ubaru, Chen, Saad 2017): Lanczos with full reorthogonalization from several
                   random starts, each giving Ritz values (nodes) and the squared first components
                   of their eigenvectors (weights, summing to 1); the density is the average of the
                   Gaussian-smoothed node sets (smoothed_density)
"""
import math

import numpy as np

DEFAULT_TOP_K = 5
DEFAULT_EIG_TOL = 1e-6
DEFAULT_TRACE_HVPS = 150         # krylov_trace: a quarter extend the top-k solve's basis, the rest probe
MIN_TRACE_HVPS = 3               # one basis step and two probes (a standard error needs two)
DEFAULT_DENSITY_STARTS = 5
DEFAULT_DENSITY_STEPS = 60
DEFAULT_DENSITY_SIGMA = 0.01      # Gaussian width, as a fraction of the spectrum's range
DENSITY_GRID_POINTS = 1000
DENSITY_MARGIN_SIGMAS = 6         # the grid extends this many widths beyond the extreme nodes
# Lanczos stops (the basis spans an invariant subspace) when a step's new direction is this small
# against the Ritz values. Not a few eps: rounding leaves components outside the subspace, and each
# product grows them by up to the spread of the spectrum: a start inside an exactly invariant
# 3-dimensional subspace of a 20x20 matrix ended its third step at 3e-13 to 3e-12 relative (200
# random bases), past a 1e-12 test for a quarter of them, depending on the BLAS kernels.
INVARIANT_SUBSPACE_TOL = 1e-10


def rademacher(rng, n, count):
    return rng.integers(0, 2, size=(n, count)).astype(np.float64) * 2.0 - 1.0


def apply(matvec, block, matmat=None):
    """H @ block ((n, m)): by ``matmat`` (rows in, rows out: hessian.MeanLossHessian.hvp_block,
    several vectors per pass over the data) when given, else one column at a time."""
    if matmat is not None:
        return np.asarray(matmat(np.ascontiguousarray(block.T))).T
    return np.column_stack([matvec(np.ascontiguousarray(block[:, j])) for j in range(block.shape[1])])


class Lanczos:
    """Lanczos with full reorthogonalization from one start vector, advanced a step at a time and
    kept: its orthonormal basis (rows), the diagonal ``alphas`` = q_j^T H q_j and the norms ``betas``
    of each step's new direction before it is normalised. One product per step. Kept so that what
    one estimate paid for serves the next: top_eigenpairs stops it on its residuals, krylov_trace
    extends the same basis and takes the trace on it exactly. The basis is re-orthogonalised twice
    at every step (classical Gram-Schmidt, twice is enough), so it stays orthonormal to rounding
    and the Ritz values carry no spurious copies. ``exhausted``: the basis spans an invariant
    subspace (or all n dimensions) and cannot grow."""

    def __init__(self, matvec, start):
        start = np.asarray(start, dtype=np.float64).reshape(-1)
        self.matvec, self.n = matvec, len(start)
        self._basis = np.zeros((min(self.n, 16), self.n))     # grown by doubling: held, not copied per step
        self._basis[0] = start / np.linalg.norm(start)
        self.alphas, self.betas = [], []
        self.exhausted = False

    @property
    def steps(self):
        return len(self.alphas)

    @property
    def basis(self):
        """The (steps, n) orthonormal rows whose products are known."""
        return self._basis[:self.steps]

    def step(self):
        j = self.steps
        w = np.asarray(self.matvec(self._basis[j]), dtype=np.float64)
        alpha = float(self._basis[j] @ w)
        self.alphas.append(alpha)
        known = self._basis[:j + 1]
        for _ in range(2):
            w = w - known.T @ (known @ w)
        beta = float(np.linalg.norm(w))
        self.betas.append(beta)
        ritz_scale = max(abs(alpha), max(map(abs, self.alphas)), 1.0)
        if j + 1 >= self.n or beta < INVARIANT_SUBSPACE_TOL * ritz_scale:
            self.exhausted = True
            return
        if j + 1 >= len(self._basis):
            grown = np.zeros((min(self.n, 2 * len(self._basis)), self.n))
            grown[:len(self._basis)] = self._basis
            self._basis = grown
        self._basis[j + 1] = w / beta

    def extend(self, steps):
        """Advance to ``steps`` steps in all (fewer when the basis is exhausted first)."""
        while self.steps < steps and not self.exhausted:
            self.step()

    def ritz(self, k):
        """(the k largest Ritz values descending, their Ritz vectors as columns, their residuals
        ||H v - theta v|| = beta_m |s_m| from the Lanczos relation: no products)."""
        m = self.steps
        off = self.betas[:m - 1]
        thetas, vectors = np.linalg.eigh(np.diag(self.alphas) + np.diag(off, 1) + np.diag(off, -1))
        thetas, vectors = thetas[::-1][:k], vectors[:, ::-1][:, :k]
        residuals = self.betas[m - 1] * np.abs(vectors[-1]) if not self.exhausted else np.zeros(len(thetas))
        return thetas, self.basis.T @ vectors, residuals


def top_eigenpairs(matvec, n, k=DEFAULT_TOP_K, tol=DEFAULT_EIG_TOL, rng=None, max_steps=None, lanczos=None):
    """(eigenvalues in descending order, eigenvectors as columns, residuals ||H v - lambda v||) of
    the ``k`` largest (algebraic) eigenvalues, by Lanczos with full reorthogonalization and no
    restarts: it stops at the first step where every wanted Ritz pair's residual is at most
    ``tol`` times the largest Ritz value's magnitude. The residuals come from the Lanczos
    relation H V s - theta V s = beta_m v_(m+1) s_m (exact while the basis stays orthogonal, which
    the full reorthogonalization keeps), so they cost no products. A basis of up to ``max_steps``
    (default: all of n) vectors of n floats is held. Problems of n <= k + 1 are solved densely.
    ``lanczos``: a Lanczos (with no steps yet) to run, so that its basis can serve later estimates
    (krylov_trace); by default one from a start drawn from ``rng``."""
    rng = rng or np.random.default_rng(0)
    if n <= k + 1:
        dense = apply(matvec, np.eye(n))
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
        residuals = np.linalg.norm(dense @ vectors - vectors * values, axis=0)
        return values, vectors, residuals
    lanczos = lanczos or Lanczos(matvec, rng.standard_normal(n))
    steps = min(n, max_steps or n)
    while lanczos.steps < steps and not lanczos.exhausted:
        lanczos.step()
        if lanczos.steps >= k:
            thetas, vectors, residuals = lanczos.ritz(k)
            if (residuals <= tol * max(abs(thetas[0]), 1e-30)).all() or lanczos.exhausted:
                break
    return lanczos.ritz(k)


def krylov_trace(matvec, n, num_hvps=DEFAULT_TRACE_HVPS, rng=None, matmat=None, lanczos=None):
    """(trace estimate, its standard error) from ``num_hvps`` products beyond those ``lanczos``
    already holds.

    tr(H) = tr(Q^T H Q) + tr((I - QQ^T) H (I - QQ^T)) for any orthonormal basis Q. With Q a Lanczos
    basis the first part is the sum of its alphas, known exactly, and a Krylov space holds the
    extreme eigenvalues of both signs that dominate a network's trace and the variance of any
    random estimate of it; the second part is estimated by Hutchinson's method with Rademacher
    probes projected off Q (unbiased for the given Q), whose spread gives the standard error. A
    quarter of the products extend the basis (that of the top-k solve when given: its products
    count again here for nothing), three quarters are probes, one block through ``matmat``.
    Compared with Hutch++ (random sketch, hutch_plus_plus), a Krylov basis captures the top of the
    spectrum at one product per dimension, and the eigen solve's products are reused: for the
    same error it takes about half the products on the digits CNN (benchmarks/RESULTS.md). When the
    products could span the space (n <= num_hvps) the basis is taken to all n: the trace is exact."""
    rng = rng or np.random.default_rng(0)
    lanczos = lanczos or Lanczos(matvec, rng.standard_normal(n))
    base = lanczos.steps
    lanczos.extend(n if n <= base + num_hvps else base + max(1, num_hvps // 4))
    exact_part = float(np.sum(lanczos.alphas))
    probes_left = num_hvps - (lanczos.steps - base)
    if lanczos.steps >= n or probes_left <= 0:
        return exact_part, (0.0 if lanczos.steps >= n else math.inf)
    basis = lanczos.basis
    probes = rademacher(rng, n, probes_left)
    probes -= basis.T @ (basis @ probes)
    samples = np.einsum('ij,ij->j', probes, apply(matvec, probes, matmat))
    stderr = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.inf
    return exact_part + float(samples.mean()), stderr


def hutch_plus_plus(matvec, n, num_hvps=DEFAULT_TRACE_HVPS, rng=None, matmat=None, deflate=None):
    """(trace estimate, its standard error) from ``num_hvps`` products (rounded down to a multiple
    of 3). When a third of them spans the whole space the trace is exact (standard error 0).
    ``matmat``: a block product (see apply); the three thirds are each one block.
    ``deflate=(values, vectors)``: known top eigenpairs (top_eigenpairs, already paid for): their
    eigenvalues enter exactly and Hutch++ runs on H projected off their vectors, where the few
    large eigenvalues that dominate a network's trace and its estimator's variance are gone."""
    rng = rng or np.random.default_rng(0)
    if deflate is not None and len(deflate[0]):
        values, vectors = deflate

        def off(block):
            return block - vectors @ (vectors.T @ block)
        rest, stderr = hutch_plus_plus(lambda v: off(matvec(off(v[:, None])[:, 0])[:, None])[:, 0], n, num_hvps, rng,
                                       None if matmat is None else (lambda rows: off(matmat(off(rows.T).T).T).T))
        return float(np.sum(values)) + rest, stderr
    third = max(1, num_hvps // 3)
    if third >= n:
        # The sketch would span everything: n products give the exact trace.
        return float(np.trace(apply(matvec, np.eye(n), matmat))), 0.0
    sketch, _ = np.linalg.qr(apply(matvec, rademacher(rng, n, third), matmat))
    exact_part = float(np.trace(sketch.T @ apply(matvec, sketch, matmat)))
    probes = rademacher(rng, n, third)
    probes -= sketch @ (sketch.T @ probes)                 # (I - Q Q^T) G
    samples = np.einsum('ij,ij->j', probes, apply(matvec, probes, matmat))
    rest = float(samples.mean())
    stderr = float(samples.std(ddof=1) / math.sqrt(third)) if third > 1 else math.inf
    return exact_part + rest, stderr


def lanczos_lockstep(matmat, starts, steps):
    """[(alphas, betas)] of one Lanczos run per row of ``starts``, advanced together so that each
    step applies H to all the runs' vectors at once (``matmat``: rows in, rows out). A run that
    reaches an invariant subspace stops; the others go on."""
    runs, n = starts.shape
    steps = min(steps, n)
    basis = np.zeros((runs, steps, n))
    basis[:, 0] = starts / np.linalg.norm(starts, axis=1, keepdims=True)
    alphas, betas = [[] for _ in range(runs)], [[] for _ in range(runs)]
    active = list(range(runs))
    for j in range(steps):
        products = matmat(basis[active, j])
        still = []
        for r, w in zip(active, products):
            alpha = float(basis[r, j] @ w)
            alphas[r].append(alpha)
            for _ in range(2):
                w = w - basis[r, :j + 1].T @ (basis[r, :j + 1] @ w)
            if j == steps - 1:
                continue
            beta = float(np.linalg.norm(w))
            if beta < 1e-10 * max(1.0, abs(alpha)):
                continue
            betas[r].append(beta)
            basis[r, j + 1] = w / beta
            still.append(r)
        active = still
        if not active:
            break
    return [(np.array(a), np.array(b)) for a, b in zip(alphas, betas)]


def quadrature(alphas, betas):
    """(nodes, weights) of the Gauss quadrature of a Lanczos run: the eigenvalues of its
    tridiagonal matrix and the squared first components of their eigenvectors."""
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    nodes, vectors = np.linalg.eigh(tridiagonal)
    return nodes, vectors[0] ** 2


def slq_density(matvec, n, starts=DEFAULT_DENSITY_STARTS, steps=DEFAULT_DENSITY_STEPS, rng=None, deflate=None,
                matmat=None):
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

    def off(rows):
        return rows - (rows @ vectors) @ vectors.T if k else rows

    def projected(rows):
        rows = off(rows)
        return off(matmat(rows) if matmat is not None else np.stack([matvec(r) for r in rows]))
    runs = []
    for alphas, betas in lanczos_lockstep(projected, off(rng.standard_normal((starts, n))), steps):
        nodes, weights = quadrature(alphas, betas)
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
