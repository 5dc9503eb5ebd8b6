"""Hessian of the mean training objective at one point of weight space: products, extreme eigenvalues, trace.

The Hessian is that of the objective's mean exactly as it is stored (objective.py): the sum of the
per-batch loss sums divided by the data set's total count (samples, or counted tokens), with
respect to the parameters with dim > 1 (conv and linear weights, as the original code; restricted
further by --include_params/--exclude_params), the model in eval mode (BatchNorm uses its running
statistics, so the loss is a fixed function of the weights). A Hessian-vector product (HVP) is one
double back-propagation pass over the whole data set; the batch size changes only speed and
memory, never the result. (The 2018 code summed the per-batch HVPs of per-batch mean losses, which
multiplied every eigenvalue by the number of batches.) The gradient graph of each batch is built
once per point of weight space and kept, as far as memory allows, so that every further product
is only the second back-propagation through it (no forward pass, no first backward).

The largest and smallest eigenvalues come from ARPACK's Lanczos method (scipy eigsh) on a
LinearOperator (the cold solve), or, point after point, from ``warm_extremes``: a block Krylov
space grown from the previous point's Ritz vectors, both ends at once, stopped by explicit
residuals (``EigenTracker`` chains them and falls back to the cold solve). The ratio
|min_eig / max_eig| measures the local non-convexity (Li et al. 2018, section 7).
"""
import dataclasses
import itertools
import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

from losslandscape.data import batch_sources, datasets
from losslandscape.directions.subsets import selected_entries
from losslandscape.errors import UsageError
from losslandscape.objectives import objective as objectives
from losslandscape.parallel.mpi_comm import SerialComm

DEFAULT_EIG_TOL = 1e-2      # the original's tolerance: ARPACK's residual test ||Hv - theta v|| <= tol |theta|
DEFAULT_EIG_MAXITER = 100   # ARPACK restarts per solve (each costs about ncv HVPs)
DEFAULT_EIG_NCV = 20        # Lanczos basis size: scipy's own default for one eigenvalue
DEFAULT_TRACE_SAMPLES = 16
EIG_SOLVERS = ('warm', 'cold')   # --eig_solver: see EigenTracker
WARM_BUDGET_PER_NCV = 2     # a warm solve gives up after this many times --eig_ncv products: by then it has
                            # spent what the cold solve takes (about 2 (ncv + 1)), so it no longer pays
START_SEED = 0              # the first point's random Lanczos start vector
TRACE_SEED = 0              # Hutchinson vectors at point k: default_rng((TRACE_SEED, k))
SHIFT_MARGIN = 0.1          # see extreme_eigenvalues
DENSE_BELOW = 8             # fewer parameters than this: form the Hessian densely instead of ARPACK
BLOCK_CHUNK = 8             # vectors per batched pass of hvp_block (activation memory grows with it)
# retain_graphs='auto' keeps the gradient graphs of as many batches as fit in this share of the
# free memory of the parameters' device (measured when the graphs are built): the same share
# --data_mode auto gives the resident data set (batch_sources.RESIDENT_MEMORY_SHARE), leaving the rest
# to the data, the batches whose graphs are not kept (each still needs its graph while its product
# is taken) and whatever else the run evaluates at the point.
RETAINED_MEMORY_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How plot_hessian_eigen.py solves each point (its --eig_* / --trace flags)."""
    tol: float = DEFAULT_EIG_TOL
    maxiter: int = DEFAULT_EIG_MAXITER
    ncv: int = DEFAULT_EIG_NCV
    solver: str = 'warm'         # one of EIG_SOLVERS
    trace_samples: int = 0       # 0: no trace


def _storage_key(tensor):
    """What identifies the memory under a tensor (views of one storage share it)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):     # tensors without a plain storage (sparse, subclasses)
        return ('tensor', id(tensor))


def _storage_bytes(tensor):
    try:
        return tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return tensor.numel() * tensor.element_size()


def attention_for_second_derivatives():
    """A context in which scaled_dot_product_attention takes its math kernel, for the passes whose
    graph is differentiated twice (every Hessian-vector product's forward pass and gradient).

    The fused kernels (flash, memory-efficient, and the CPU's flash kernel) that transformers' default
    attention ('sdpa') dispatches to have no derivative of their backward and no forward-mode
    derivative, so a product through them fails; the math kernel is made of ordinary operations,
    so both work through it, with the same values up to float rounding. Only the products run under
    it: the grid's loss evaluation keeps the fast kernels. Models without
    scaled_dot_product_attention are unaffected."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:   # torch 2.2: the older switch of the same flags
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    return sdpa_kernel(SDPBackend.MATH)


def probe_product(net, the_objective, batch, params=None):
    """One Hessian-vector product of ``the_objective`` on ``batch`` at ``net``'s weights, taken as
    the products of a run take it (attention_for_second_derivatives): whatever makes the products
    impossible (an operation without a second derivative) raises here, before a run writes a file.
    ``params``: those the Hessian is taken over (default: hessian_parameters(net))."""
    params = hessian_parameters(net) if params is None else list(params)
    with attention_for_second_derivatives(), torch.enable_grad():
        loss = the_objective.loss_sum(net, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, torch.ones_like(g)) for g in grads if g is not None and g.requires_grad]
        if pairs:
            torch.autograd.grad([g for g, _ in pairs], params, grad_outputs=[v for _, v in pairs], allow_unused=True)


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


class _Shard:
    """The batches of ``source`` one rank takes: every ``size``-th from its ``rank`` (all of them
    in a serial run), in the source's fixed order."""

    def __init__(self, source, rank, size):
        self.source, self.rank, self.size = source, rank, size

    def batches(self):
        batches = self.source.batches()
        return batches if self.size == 1 else itertools.islice(batches, self.rank, None, self.size)


class MeanLossHessian:
    """H = d^2 (mean objective over ``data``) / dw^2 for the parameters ``params`` (default:
    hessian_parameters(net)).

    ``data``: a batch source (data.batch_sources), or a CachedDataset (evaluated in batches of
    ``batch_size``); ``loss``: an objective.Objective or a --loss_name. Products take and return
    flat float64 numpy vectors (what ARPACK works in); the model computes in its own dtype.
    ``hvp_count`` counts every product (``on_products``, when set, is called with it after each
    product or block); a product holding inf or NaN raises NonFiniteProduct. The
    parameters are read when a product is taken, so moving the model in place (Run.move_to) moves
    the Hessian with it.

    ``retain_graphs``: a product is the derivative of (gradient . v), so the gradient of each
    batch, computed with its graph (create_graph), serves every product at the same weights; a
    kept graph saves the forward pass and the first backward of its batch in all later products.
    'auto' keeps the graphs of as many batches as fit in RETAINED_MEMORY_SHARE of the free memory
    of the parameters' device, divided among ``share`` processes on it (a node's MPI ranks; a
    batch's graph measured on the first batch), the rest recomputed at
    every product; True keeps every batch's graph whatever its size; False keeps none (a forward
    pass and two backward passes per batch and product). The graphs are built by the first product
    after they went stale and belong to the weights they were built at: every product compares
    (identity, in-place version counter, data pointer) of each parameter and buffer of ``net``
    with those at the build, so moving the model in place (moving.set_weights/set_states,
    copy_, add_ under no_grad), recomputed BatchNorm statistics and replaced tensors all rebuild
    them. Not seen: a ``.data`` assignment that changes values but keeps the data pointer (and
    anything else that writes into the tensors' memory behind autograd's version counter); call
    ``invalidate()`` after such a change.

    ``comm`` (an mpi_comm comm; default serial): every rank holds the whole data source and takes
    every comm.size-th batch of it; each product (and a custom objective's count) is summed over
    the ranks, so every rank gets the same H v and the solves built on it run alike everywhere."""

    def __init__(self, net, data, loss='crossentropy', batch_size=128, *, params=None, retain_graphs='auto',
                 share=1, comm=None):
        # The options by keyword only: a parameter list passed where batch_size stood once went unnoticed.
        if not (retain_graphs is True or retain_graphs is False
                or (isinstance(retain_graphs, str) and retain_graphs == 'auto')):
            raise UsageError(f"retain_graphs must be 'auto', True or False, not {retain_graphs!r}")
        if isinstance(data, datasets.CachedDataset):
            data = batch_sources.CachedBatches(data, batch_size, data.device)
        self.net, self.data = net, data
        # Under MPI (hessian_spectrum.py --mpi) each rank takes every comm.size-th batch and the
        # products are summed over the ranks (mpi_comm.sum): a product is split by data shard.
        self.comm = comm or SerialComm()
        self.shard = _Shard(data, self.comm.rank, self.comm.size)
        self.objective = objectives.resolve(loss) if not isinstance(loss, objectives.Objective) else loss
        self.params = hessian_parameters(net) if params is None else list(params)
        self.size = sum(p.numel() for p in self.params)
        self.retain_graphs = retain_graphs
        self.share = share    # processes (MPI ranks of a node) sharing the device's memory
        self.hvp_count = 0
        # Called with hvp_count after every product (or block of them): the grid's progress line
        # (evaluators.ProductProgress), so that a slow point shows it is moving.
        self.on_products = None
        self._count = None
        self._functional_ok = True
        # The kept gradients (each a tuple over self.params, holding its batch's graph) of the
        # first len(_retained_grads) batches, the weights key they were built at, and whether
        # they cover every batch; None: nothing built, or dropped.
        self._retained_grads = None
        self._retained_key = None
        self._retained_all = False
        self.graph_bytes_per_batch = None    # 'auto': the first batch's graph, as last measured

    @property
    def retained_batches(self):
        """How many batches' gradient graphs are held now (0 before the first product)."""
        return len(self._retained_grads) if self._retained_grads is not None else 0

    def invalidate(self):
        """Drop the kept gradient graphs; the next product builds them again at the weights then.
        Needed only after a change the weights key cannot see (see the class docstring)."""
        self._retained_grads, self._retained_key, self._retained_all = None, None, False

    def _weights_key(self):
        """What the graphs depend on: every parameter and buffer of the model (not only the
        Hessian's: the others enter the loss too), each as (identity, in-place version counter,
        data pointer). copy_/add_/fill_ bump the version, a replaced tensor changes the identity,
        a .data assignment (nearly always) the pointer; a few hundred tuples, cheap next to any
        product."""
        tensors = itertools.chain(self.net.parameters(), self.net.buffers(), self.params)
        return tuple((id(t), t._version, t.data_ptr()) for t in tensors)

    def _graphs_current(self):
        """Whether the kept graphs belong to the model's weights now; stale ones are dropped at
        once, so their memory is free before new ones are built."""
        if self._retained_grads is not None and self._retained_key != self._weights_key():
            self.invalidate()
        return self._retained_grads is not None

    @property
    def count(self):
        """What the mean divides by: the number of samples for the built-in losses, else the
        objective's total count (one pass, once: counts never depend on the weights)."""
        if self._count is None:
            # Every rank holds the whole data source, so a built-in loss knows the count; other
            # objectives count their own batches, summed over the ranks' shards.
            self._count = self.data.num_samples if isinstance(self.objective, objectives.ClassificationObjective) \
                else float(self.comm.sum(np.array([objectives.total_count(self.objective, self.net, self.shard)]))[0])
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
        """H @ vector, accumulated over all batches of the data (one pass; through the kept
        gradient graphs where there are, see ``retain_graphs``; summed over the ranks' shards)."""
        return self._finished(self.comm.sum(self._local_hvp(vector)), 1)

    def _finished(self, products, count):
        """The summed ``products`` (``count`` of them) checked and counted. Checked after the sum,
        so every rank raises alike."""
        self.hvp_count += count
        if self.on_products is not None:
            self.on_products(self.hvp_count)
        if not np.isfinite(products).all():
            raise NonFiniteProduct('the Hessian-vector product holds inf or NaN')
        return products

    def _local_hvp(self, vector):
        """This rank's share of H @ vector (its shard's batches), as float64 numpy."""
        self.net.eval()
        vs = self._split(vector)
        with attention_for_second_derivatives():   # the graphs built here are differentiated twice
            total = self._recomputed_hvp(vs) if self.retain_graphs is False else self._retained_hvp(vs)
        return total.cpu().numpy()

    def _recomputed_hvp(self, vs):
        """retain_graphs=False: every batch's forward pass and gradient graph anew."""
        n = self.count
        total = torch.zeros(self.size, dtype=torch.float64, device=self.params[0].device)
        with torch.enable_grad():
            for batch in self.shard.batches():
                total += self._product_through(self._batch_gradient(batch, n), vs, keep=False)
        return total

    def _batch_gradient(self, batch, n):
        """d (this batch's share of the mean loss: summed over its samples, divided by ``n``, the
        total count) / d params, with its graph (create_graph)."""
        loss = self.objective.loss_sum(self.net, batch) / n
        return torch.autograd.grad(loss, self.params, create_graph=True)

    def _product_through(self, grads, vs, keep):
        """This batch's share of H v: the derivative of grads . v, i.e. the backward of the
        gradient graph seeded with v (vector-Jacobian product); ``keep``: the graph stays usable."""
        # A gradient entry with no graph does not depend on the weights: its share of grads . v is
        # a constant, nothing to differentiate (autograd.grad refuses outputs without a graph).
        pairs = [(g, v) for g, v in zip(grads, vs) if g.requires_grad]
        products = torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                       retain_graph=keep)
        return torch.cat([h.reshape(-1) for h in products]).double()

    def _retained_hvp(self, vs):
        """H v through the kept gradient graphs (no forward pass for their batches), the other
        batches recomputed; builds the graphs first when there are none at these weights."""
        n = self.count      # a pass of its own the first time (some objectives): before this one
        if not self._graphs_current():
            return self._build_graphs(vs, n)
        total = torch.zeros(self.size, dtype=torch.float64, device=self.params[0].device)
        for grads in self._retained_grads:
            total += self._product_through(grads, vs, keep=True)
        if not self._retained_all:
            with torch.enable_grad():
                # The kept graphs are those of the first batches: skip them in the data's fixed order.
                for batch in itertools.islice(self.shard.batches(), len(self._retained_grads), None):
                    total += self._product_through(self._batch_gradient(batch, n), vs, keep=False)
        return total

    def _build_graphs(self, vs, n):
        """One pass as in a recomputed product that keeps the gradients (and so the graphs) of
        the first batches, as many as the budget allows ('auto') or all (True); returns H v."""
        key = self._weights_key()      # before the pass: were it to move a buffer, the next product rebuilds
        budget = None if self.retain_graphs is True else self._retained_budget()
        keep = math.inf if self.retain_graphs is True else None
        total = torch.zeros(self.size, dtype=torch.float64, device=self.params[0].device)
        kept, batches = [], 0
        try:
            with torch.enable_grad():
                for index, batch in enumerate(self.shard.batches()):
                    if keep is None:
                        grads, self.graph_bytes_per_batch = self._measured_gradient(batch, n)
                        keep = budget // self.graph_bytes_per_batch if self.graph_bytes_per_batch else math.inf
                    else:
                        grads = self._batch_gradient(batch, n)
                    total += self._product_through(grads, vs, keep=index < keep)
                    if index < keep:
                        kept.append(grads)
                    batches = index + 1
        except BaseException:
            # A pass cut short holds graphs of some batches only: start again at the next product.
            self.invalidate()
            raise
        self._retained_grads, self._retained_key, self._retained_all = kept, key, len(kept) == batches
        return total

    def _retained_budget(self):
        """The bytes 'auto' may hold in gradient graphs on the parameters' device."""
        device = self.params[0].device
        free = batch_sources.free_memory_bytes(device)
        if device.type == 'cuda':
            # Blocks PyTorch's caching allocator holds but does not use (the graphs of the last
            # point, dropped just before this) are free to the graphs, though not to the driver.
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return RETAINED_MEMORY_SHARE * free / self.share

    def _measured_gradient(self, batch, n):
        """(``_batch_gradient(batch, n)``, the bytes its graph holds): the distinct storages of the
        tensors autograd saves in the forward pass and the create_graph backward, less those that
        exist anyway (the model's parameters and buffers, the batch, which may be a slice of a
        resident data set's storage), plus the batch and the gradients themselves, which the kept
        graph keeps alive."""
        existing = {_storage_key(t) for t in itertools.chain(self.net.parameters(), self.net.buffers())}
        batch_sources.map_tensors(batch, lambda t: existing.add(_storage_key(t)))
        seen, saved_bytes = set(), [0]

        def pack(tensor):
            storage_key = _storage_key(tensor)
            if storage_key not in existing and storage_key not in seen:
                seen.add(storage_key)
                saved_bytes[0] += _storage_bytes(tensor)
            # A detached alias, not the tensor itself: saving an output in its own grad_fn would
            # make a reference cycle; autograd attaches the graph again when it unpacks.
            return tensor.detach()

        # The hooks stay with this batch's graph: a Python call per saved tensor when a product
        # goes through it, microseconds next to the product.
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            grads = self._batch_gradient(batch, n)
        grad_bytes = sum(g.numel() * g.element_size() for g in grads)
        return grads, saved_bytes[0] + batch_sources.batch_bytes(batch) + grad_bytes

    def hvp_block(self, vectors, chunk=BLOCK_CHUNK):
        """H @ each row of ``vectors`` ((m, n) float64 numpy), ``chunk`` rows per pass over the data.

        Forward-over-reverse products (torch.func: jvp of grad) batched with vmap, so a pass
        shares the data and the model's kernels among the vectors: several times the products
        per second of ``hvp`` on the suite's CNNs (benchmarks/RESULTS.md). A model or objective
        torch.func cannot transform (in-place tricks, .item() on a tensor) falls back to ``hvp``,
        one vector at a time, for the rest of the run; the values agree to float32 rounding.

        When every batch's gradient graph is kept (``retain_graphs``), the rows go one by one
        through the kept graphs instead: one backward per batch and row, faster than a pass of
        the batched forward-over-reverse products, and equal to ``hvp``. Unbuilt graphs are built
        by the first row, which also tells whether they all fit."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        # One sum over the ranks for the whole block, whichever path each rank took (their memory,
        # and so their kept graphs, may differ): every rank makes the same collective calls.
        return self._finished(self.comm.sum(self._local_block(vectors, chunk)), len(vectors))

    def _local_block(self, vectors, chunk):
        """This rank's share of hvp_block, (m, n) float64 numpy."""
        rows = []
        if self.retain_graphs is not False and len(vectors) and not self._graphs_current():
            rows.append(self._local_hvp(vectors[0]))
        if self.retain_graphs is not False and self._graphs_current() and self._retained_all:
            return np.stack(rows + [self._local_hvp(v) for v in vectors[len(rows):]])
        vectors = vectors[len(rows):]
        if self._functional_ok:
            try:
                out = np.concatenate([np.empty((0, self.size))] + [self._functional_block(vectors[i:i + chunk])
                                                                   for i in range(0, len(vectors), chunk)])
                return np.concatenate([np.reshape(rows, (len(rows), self.size)), out])
            except (RuntimeError, TypeError, ValueError, UsageError):
                self._functional_ok = False
        return np.stack(rows + [self._local_hvp(v) for v in vectors])

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
        with attention_for_second_derivatives():   # forward-mode derivatives of the gradient
            for batch in self.shard.batches():
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
    solves took. A solve that fails gives NaN and None, and ``failure`` says why. ``path``: how
    the point was solved, one of SOLVE_PATHS."""
    max_eig: float
    min_eig: float
    max_vec: np.ndarray
    min_vec: np.ndarray
    hvp_count: int
    failure: str = ''
    path: str = 'cold'


# How a point was solved: 'cold', ARPACK from the seeded start vector (the first point of a chain,
# or --eig_solver cold); 'warm', warm_extremes from the previous point's eigenvectors; 'fallback',
# a warm solve that did not converge, then the cold solve (its products count both).
SOLVE_PATHS = ('cold', 'warm', 'fallback')


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
        if _annihilates(operator, v0):
            # A zero operator (a point where every ReLU is dead is flat in the weights): ARPACK finds
            # no Krylov space to start in ('Starting vector is zero'), yet every eigenvalue is 0.
            return 0.0, v0 / np.linalg.norm(v0), ''
        return math.nan, None, f'ARPACK failed ({err})'
    return float(values[0]), vectors[:, 0], ''


def _annihilates(operator, v0):
    """Whether ``operator`` maps ``v0`` and a random vector to exact zeros: then, with probability
    one, it is the zero operator."""
    other = np.random.default_rng(START_SEED + 1).standard_normal(operator.shape[0])
    try:
        return all(not np.any(operator.matvec(v)) for v in (v0, other))
    except NonFiniteProduct:
        return False


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


def warm_extremes(hessian, start, tol, budget, max_basis):
    """Largest and smallest eigenvalue of ``hessian`` (a MeanLossHessian) from ``start`` ((m, n)
    rows: the previous point's eigenvectors), both ends in one subspace.

    Rayleigh-Ritz on a basis V grown from ``start`` by the residuals of the extreme Ritz pairs
    that have not converged: each step adds one product per open end, and the basis spans the
    block Krylov space of ``start`` (Lanczos with full reorthogonalization, the block being the
    previous point's answer, so a basis of a few vectors already holds most of the new one). V and
    W = H V are both kept, so every Ritz pair's residual ||H y - theta y|| = ||W s - theta V s||
    is explicit, from the products themselves, at no extra product. The stopping rule is ARPACK's
    tolerance on the whole spectrum's scale, with a margin: both residuals <= ``tol`` |theta_max| /
    WARM_RESIDUAL_MARGIN. A symmetric matrix has an eigenvalue within the residual of every Ritz
    value, and the Ritz values lie inside the spectrum (theta_max <= lambda_max, theta_min >=
    lambda_min), so each end is within tol |lambda_max| of an eigenvalue, on the side a cold solve
    errs too. But not necessarily of the extreme one: a network's smallest eigenvalues are a
    dense cluster, and a start vector that followed one branch of it may reach a small residual
    on a neighbour of the smallest. Further steps push theta_min down through the cluster; the
    margin buys them (see WARM_RESIDUAL_MARGIN).

    More than ``max_basis`` vectors: a thick restart keeps the RESTART_KEEP extreme Ritz pairs of
    each end (their products are combinations of W: none to take again). More than ``budget``
    products, a non-finite product or an exhausted basis: ``failure`` says so (EigenTracker then
    solves cold). The vectors are those of the converged pair, for the next point."""
    count_before = hessian.hvp_count

    def failed(why):
        return ExtremeEigen(math.nan, math.nan, None, None, hessian.hvp_count - count_before, why, 'warm')

    basis = _orthonormal_rows(np.asarray(start, dtype=np.float64))
    try:
        images = hessian.hvp_block(basis)
        while True:
            values, coords = np.linalg.eigh(_symmetric(basis @ images.T))
            ends = [len(values) - 1, 0]            # the top and the bottom Ritz pair
            ritz = coords[:, ends].T @ basis
            residuals = coords[:, ends].T @ images - values[ends, None] * ritz
            still_open = np.linalg.norm(residuals, axis=1) > tol * abs(values[-1]) / WARM_RESIDUAL_MARGIN
            if not still_open.any():
                return ExtremeEigen(float(values[-1]), float(values[0]), ritz[0], ritz[1],
                                    hessian.hvp_count - count_before, '', 'warm')
            if hessian.hvp_count - count_before + still_open.sum() > budget:
                return failed(f'the warm solve did not converge within {budget} products')
            new = _orthonormal_rows(_without_components(residuals[still_open], basis))
            if not len(new):
                return failed('the warm solve\'s Krylov space is exhausted before its residuals are small')
            if len(basis) + len(new) > max_basis:
                keep = sorted(set(range(RESTART_KEEP)) | set(range(len(values) - RESTART_KEEP, len(values))))
                basis, images = coords[:, keep].T @ basis, coords[:, keep].T @ images
            basis = np.concatenate([basis, new])
            images = np.concatenate([images, hessian.hvp_block(new)])
    except NonFiniteProduct as err:
        return failed(str(err))


RESTART_KEEP = 3    # Ritz pairs of each end a warm solve's thick restart keeps
# A warm solve stops at residuals this many times below tol |theta_max|. Stopped at the bound itself,
# min_eig of a briefly trained digits CNN (4x4 map over +-0.5, 1864 weights) ended 1.6 tol |max_eig|
# above the dense Hessian's smallest eigenvalue at one point: its Ritz value sat on the 4th smallest
# (the bottom four within 0.4 of 27). With the margin every point of that map and of the 8-epoch
# digits CNN's 5x5 map lies within 0.57 tol |max_eig| of the dense (resp. cold) values, as close as
# the cold solve comes (0.54 tol there), for 12.8 instead of 11.4 products per point on the latter.
WARM_RESIDUAL_MARGIN = 1.5


def _symmetric(matrix):
    """The symmetric part: V^T H V is symmetric but for the float32 rounding of the products."""
    return 0.5 * (matrix + matrix.T)


def _without_components(rows, basis):
    """``rows`` less their components in the span of ``basis``'s orthonormal rows; twice, as
    classical Gram-Schmidt loses orthogonality once the residuals are small."""
    for _ in range(2):
        rows = rows - (rows @ basis.T) @ basis
    return rows


def _orthonormal_rows(rows):
    """An orthonormal basis (rows) of the span of ``rows``, less directions that are rounding
    noise (below 1e-8 of the longest row): nothing when all are."""
    if not len(rows):
        return rows
    q, r = np.linalg.qr(rows.T)
    scale = np.linalg.norm(rows, axis=1).max()
    kept = np.abs(np.diag(r)) > 1e-8 * scale if scale > 0 else np.zeros(len(rows), dtype=bool)
    return q[:, kept].T


class EigenTracker:
    """Extreme eigenvalues point after point along a chain of neighbouring grid points.

    ``solver`` 'warm' (EIG_SOLVERS): the first point of a chain is solved cold (ARPACK from the
    seeded start vector, ``extreme_eigenvalues``), every later one by ``warm_extremes`` from the
    eigenvectors of the point before: neighbouring points have nearly the same extreme
    eigenvectors, so it converges in a few products. A warm solve that does not converge within
    WARM_BUDGET_PER_NCV x ncv products (or meets a non-finite product) falls back to the cold
    solve. ``reset()`` starts a new chain (the next point is not a neighbour of the last).
    'cold': every point from the same seeded vector, so a point's result does not depend on
    which points this rank solved before it: resumed and MPI runs then give bit for bit the
    values of an uninterrupted serial run with the same --threads (a different thread count may
    sum the products in another order)."""

    def __init__(self, tol=DEFAULT_EIG_TOL, maxiter=DEFAULT_EIG_MAXITER, ncv=DEFAULT_EIG_NCV, solver='warm',
                 warm_budget=None):
        if solver not in EIG_SOLVERS:
            raise UsageError(f'solver must be one of {", ".join(EIG_SOLVERS)}, not {solver!r}')
        self.tol, self.maxiter, self.ncv, self.solver = tol, maxiter, ncv, solver
        self.warm_budget = WARM_BUDGET_PER_NCV * ncv if warm_budget is None else warm_budget
        # The warm basis holds as many vectors as ARPACK's (ncv), and at least the two ends'
        # restart pairs and a step beyond them.
        self.max_basis = max(ncv, 2 * RESTART_KEEP + 2)
        # (2, n): the last point's eigenvectors (top, bottom); None: a new chain. Two Ritz vectors of
        # each end instead cost a product more per point on the digits CNN maps and were no closer to
        # the dense eigenvalues.
        self.start = None

    def reset(self):
        """The next point starts a new chain: it is solved cold."""
        self.start = None

    def solve(self, hessian):
        warm = None
        if self.solver == 'warm' and self.start is not None and hessian.size >= DENSE_BELOW:
            warm = warm_extremes(hessian, self.start, self.tol, self.warm_budget, self.max_basis)
        if warm is not None and not warm.failure:
            result = warm
        else:
            result = extreme_eigenvalues(hessian, self.tol, self.maxiter, self.ncv)
            if warm is not None:
                result.hvp_count += warm.hvp_count
                result.path = 'fallback'
        # A failed solve keeps the last good start vectors.
        if result.max_vec is not None and result.min_vec is not None:
            self.start = np.stack([result.max_vec, result.min_vec])
        return result
